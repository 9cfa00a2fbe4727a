"""Imports every op family so that their @op decorators run. Add a new family module here."""
import importlib
import pkgutil

from . import __path__ as _ops_path

for _m in pkgutil.iter_modules(_ops_path):
    if not _m.name.startswith("_") and _m.name != "registry":
        importlib.import_module(f"{__package__}.{_m.name}")

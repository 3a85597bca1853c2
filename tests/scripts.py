"""Import the repository's scripts (analysis/, benchmarks/) as modules in tests."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    """The module of the script at ``relative_path`` (from the repository root), executed once
    and registered under its file name, so that numba can find the module of its cached
    (``cache=True``) functions again in a later run."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module

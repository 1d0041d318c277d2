"""Several builds of the extension loaded into one process, for the side-by-side scripts."""

import importlib.util
from types import ModuleType


def load(builds: list[str]) -> dict[str, ModuleType]:
    """`NAME=PATH` arguments (PATH a build's `_sce_rs.abi3.so`) to modules, one thread each.

    Each is loaded under a parent name of its own, so that each keeps its own statics (thread
    pool, allocator cache).
    """
    mods = {}
    for i, arg in enumerate(builds):
        name, path = arg.split("=", 1)
        spec = importlib.util.spec_from_file_location(f"build{i}._sce_rs", path)
        assert spec is not None and spec.loader is not None, path
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        m.set_num_threads(1)
        mods[name] = m
    return mods

"""``python -m sce_rs``: what this installation is and runs on, like ``numpy.show_config()``.

Prints the version, the instruction set the kernels dispatch to, the thread count (and where
it came from), and which integrations and optional peers of the benchmark are installed,
without importing them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys

import numpy as np

import sce_rs

PEERS = ("scipy", "torch", "jax", "onnxruntime", "matplotlib", "tqdm")
# The optional libraries sce_rs integrates with: the module that needs each.
INTEGRATIONS = {"torch": "sce_rs.torch", "dask": "sce_rs.dask", "jax": "sce_rs.jax"}


def _version(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def report() -> str:
    threads = sce_rs.get_num_threads()
    source = "SCE_RS_NUM_THREADS" if os.environ.get("SCE_RS_NUM_THREADS") else "default"
    lines = [
        f"sce_rs {sce_rs.__version__}",
        f"  extension:    {sce_rs._sce_rs.__file__}",
        f"  SIMD backend: {sce_rs.simd_backend()}",
        f"  threads:      {threads} ({source}; set_num_threads() changes it)",
        f"  python:       {platform.python_version()} on {platform.machine()} {sys.platform}",
        f"  numpy:        {np.__version__}",
        "  integrations:",
    ]
    for name, module in INTEGRATIONS.items():
        version = _version(name)
        state = f"with {name} {version}" if version else f"needs {name}, not installed"
        lines.append(f"    {module:<12} {state}")
    lines.append("  optional peers (python -m sce_rs.bench):")
    for name in PEERS:
        lines.append(f"    {name:<12} {_version(name) or 'not installed'}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())

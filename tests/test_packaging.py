"""Packaging as a user meets it: the wheel is abi3 and works in a fresh virtual environment,
the sdist builds and installs, and `pip install .` from the source tree works.

Each install goes into a new venv with only the package's declared dependencies (from the
package index), and the check runs from a directory outside the source tree, so the
installed copy is the one imported. The Rust build of the sdist and of the source tree share
one cargo target directory, so the dependencies compile once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

MATURIN = Path(sys.executable).parent / "maturin"

# Run inside the fresh venv: the installed package computes, its typing files are there, and
# importing it pulls in none of the optional libraries.
CHECK = """
import sys, pathlib, numpy as np, sce_rs
where = pathlib.Path(sce_rs.__file__).resolve()
assert sys.prefix in str(where), where
assert (where.parent / "py.typed").exists() and (where.parent / "_sce_rs.pyi").exists()
assert not any(m in sys.modules for m in ("torch", "dask", "jax"))
p = sce_rs.softmax(np.array([2.0, 1.0, 0.1]))
assert abs(p.sum() - 1) < 1e-12 and p.argmax() == 0
loss = sce_rs.cross_entropy(np.array([[2.0, 1.0, 0.1]], np.float32), np.array([0]))
assert loss.dtype == np.float32 and abs(float(loss) - 0.41703) < 1e-4
print(sce_rs.__version__, sce_rs.simd_backend())
"""


def run(*args, **kwargs):
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=900, **kwargs)


def fresh_venv(path: Path) -> Path:
    run(sys.executable, "-m", "venv", str(path))
    return path / "bin" / "python"


def install_and_check(tmp_path: Path, what: str) -> str:
    python = fresh_venv(tmp_path / "venv")
    env = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target" / "packaging"))
    env.pop("VIRTUAL_ENV", None)
    run(str(python), "-m", "pip", "install", "--quiet", what, env=env, cwd=tmp_path)
    return run(str(python), "-c", CHECK, cwd=tmp_path).stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target" / "packaging"))
    run(str(MATURIN), "build", "--release", "--out", str(out), cwd=ROOT, env=env)
    run(str(MATURIN), "sdist", "--out", str(out), cwd=ROOT)
    return out


def test_wheel_is_abi3_and_works_in_a_fresh_venv(dist, tmp_path):
    (wheel,) = dist.glob("*.whl")
    # One wheel for every CPython from 3.9 on: the stable ABI, built for the lowest version.
    assert "-cp39-abi3-" in wheel.name, wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "torch.py",
        "_torch_ops.py",
        "jax.py",
        "dask.py",
        "_interop.py",
        "_axes.py",
        "py.typed",
        "_sce_rs.pyi",
    ):
        assert f"sce_rs/{module}" in names
    assert install_and_check(tmp_path, str(wheel)).startswith("0.")


def test_sdist_builds_and_installs(dist, tmp_path):
    (sdist,) = dist.glob("*.tar.gz")
    assert install_and_check(tmp_path, str(sdist)).startswith("0.")


def test_pip_install_from_the_source_tree(tmp_path):
    assert install_and_check(tmp_path, str(ROOT)).startswith("0.")

"""The hand-written stub of the extension matches the compiled module (mypy's stubtest)."""

from __future__ import annotations

import subprocess
import sys

import pytest

mypy = pytest.importorskip("mypy", reason="mypy is a development dependency")


def test_stub_matches_the_extension():
    res = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "sce_rs._sce_rs"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr

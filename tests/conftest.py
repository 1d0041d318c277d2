"""Shared test helpers: where the shared conformance data lives, and the one tolerance table."""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCE_RS_SHARED", ROOT.parent / "shared"))

# Tolerances against float64 references, by the dtype the result is stored in. They are the
# conformance suite's and are stated here once: float64 results carry a few ULP of kernel error
# (our exp is within 2 ULP; sums are accumulated in float64), so 1e-10 relative leaves ample
# room while catching any formula error; float32 results are rounded from float64-accumulated
# values once, so 2e-5 relative (~170 ULP) covers long rows and cancellation in gradients;
# float16 and bfloat16 are computed in float32 and rounded once, so two units of their own
# precision (2**-10 and 2**-7) bound the error.
TOLERANCE = {
    "float64": (1e-10, 1e-12),
    "float32": (2e-5, 2e-6),
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1.6e-2),
}

FLOAT_DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]


def dtype_name(a) -> str:
    return np.asarray(a).dtype.name


def assert_close(got, want, dtype_like=None):
    """got (any float dtype) equals the float64 reference within the tolerance of its dtype.

    NaN must be NaN where the reference is NaN, infinities must match exactly.
    """
    name = dtype_name(dtype_like if dtype_like is not None else got)
    if name not in TOLERANCE:
        name = "float64"
    rtol, atol = TOLERANCE[name]
    g = np.asarray(got)
    if g.dtype.kind == "V":
        g = g.astype(np.float32)
    g = g.astype(np.float64)
    w = np.asarray(want, dtype=np.float64)
    assert g.shape == w.shape, f"shape {g.shape} != {w.shape}"
    np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg="NaN positions differ")
    inf = np.isinf(w)
    np.testing.assert_array_equal(g[inf], w[inf], err_msg="infinities differ")
    ok = ~np.isnan(w) & ~inf
    np.testing.assert_allclose(g[ok], w[ok], rtol=rtol, atol=atol)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def optional_import(name: str):
    """An optional integration's module (torch, dask): skipped where it is not installed,
    unless SCE_RS_REQUIRE_EXTRAS is set (as `make test` and CI do), where a missing one fails."""
    if os.environ.get("SCE_RS_REQUIRE_EXTRAS"):
        import importlib

        return importlib.import_module(name)
    return pytest.importorskip(name)

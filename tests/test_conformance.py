"""Every shared conformance vector (computed by PyTorch in float64) as its own test case."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import sce_rs
from conftest import SHARED

CONF = SHARED / "conformance"


def _load():
    spec = importlib.util.spec_from_file_location("run_conformance", CONF / "run_conformance.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    with open(CONF / "cases.json") as f:
        cases = json.load(f)["cases"]
    npz = np.load(CONF / "arrays.npz")
    return runner, cases, {k: npz[k] for k in npz.files}


if not (CONF / "cases.json").exists():
    raise RuntimeError(
        f"conformance data not found in {CONF}; set SCE_RS_SHARED to the shared folder"
    )

RUNNER, CASES, ARRAYS = _load()


def test_every_function_of_the_contract_has_cases():
    assert {c["fn"] for c in CASES} <= set(sce_rs.__all__)
    assert len(CASES) >= 590


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c['id']}" for i, c in enumerate(CASES)])
def test_conformance(case):
    msg = RUNNER.run_case(sce_rs, ARRAYS, case)
    assert msg is None, msg

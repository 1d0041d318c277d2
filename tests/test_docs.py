"""The examples in the package's docstrings run and say what they show."""

from __future__ import annotations

import doctest

import pytest

import sce_rs
import sce_rs.reference


@pytest.mark.parametrize("module", [sce_rs, sce_rs.reference], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0

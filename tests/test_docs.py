"""The examples in the package's docstrings and in the README run and say what they show."""

from __future__ import annotations

import doctest
import re

import pytest

import sce_rs
import sce_rs.reference
from conftest import ROOT


@pytest.mark.parametrize("module", [sce_rs, sce_rs.reference], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_readme_examples():
    """The README's ```python blocks run as one doctest session, top to bottom."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    test = doctest.DocTestParser().get_doctest("\n".join(blocks), {}, "README.md", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.tries >= 10
    assert runner.failures == 0

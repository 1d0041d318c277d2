"""The examples in the package's docstrings and in the README run and say what they show."""

from __future__ import annotations

import doctest
import inspect
import re

import pytest

import sce_rs
import sce_rs.reference
from conftest import ROOT, optional_import

MODULES = [
    "sce_rs",
    "sce_rs._sce_rs",
    "sce_rs._scoring",
    "sce_rs.reference",
    "sce_rs.torch",
    "sce_rs.dask",
    "sce_rs.jax",
]
# Functions whose whole story is one line (no options, nothing to show).
ONE_LINERS = {"get_num_threads", "set_num_threads", "simd_backend"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = optional_import(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("name", sorted(set(sce_rs.__all__) - ONE_LINERS - {"__version__"}))
def test_public_functions_have_numpy_style_docstrings(name):
    obj = getattr(sce_rs, name)
    # getdoc: Python-defined functions have indented docstrings.
    doc = inspect.getdoc(obj)
    sections = ["Parameters\n----------", "Returns\n-------", "Examples\n--------\n>>> "]
    if isinstance(obj, type):  # a result type (TokenLogprobs): its fields
        sections = ["Attributes\n----------"]
    for section in sections:
        assert section in doc, (name, section)


def test_readme_examples():
    """The README's ```python blocks run as one doctest session, top to bottom."""
    optional_import("torch")
    optional_import("dask.array")
    optional_import("jax")
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    test = doctest.DocTestParser().get_doctest("\n".join(blocks), {}, "README.md", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test, clear_globs=False)
    # The README compiles a function of the doctest's namespace: Dynamo's caches of it must
    # go before that namespace is cleared, or PyTorch reports a KeyError at interpreter exit.
    import torch._dynamo

    torch._dynamo.reset()
    test.globs.clear()
    assert runner.tries >= 10
    assert runner.failures == 0

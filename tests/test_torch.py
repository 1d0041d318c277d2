"""sce_rs.torch against PyTorch: same results for every option, autograd (gradcheck), modules,
in-place gradients, zero-copy views, errors, and a training loop that follows PyTorch's."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from conftest import assert_close, optional_import

torch = optional_import("torch")
F = torch.nn.functional
from test_linear import assert_gemm_close  # noqa: E402

import sce_rs.torch as st  # noqa: E402  (after the skip: it imports torch)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


def np_of(t):
    """float64 NumPy copy of a tensor (of any dtype), for assert_close."""
    return t.detach().to(torch.float64).numpy()


def like(dtype):
    """A zero-size array whose dtype name picks assert_close's tolerance."""
    import ml_dtypes

    return np.empty(0, ml_dtypes.bfloat16 if dtype == torch.bfloat16 else NAMES[dtype])


def check_against_torch(ours_fn, torch_fn, inputs, reduction, dtype, seed=0):
    """Loss and input gradients of ours_fn(*inputs) in `dtype` against torch_fn on the float64
    versions, with a random grad_output (so backward's scaling is tested, not just 1)."""
    gen = torch.Generator().manual_seed(seed)
    ours_in = [x.detach().to(dtype).requires_grad_() for x in inputs]
    ref_in = [x.detach().to(dtype).to(torch.float64).requires_grad_() for x in inputs]
    ours, ref = ours_fn(*ours_in), torch_fn(*ref_in)
    assert ours.dtype == dtype and ours.shape == ref.shape
    assert_close(np_of(ours), np_of(ref), like(dtype))
    g = torch.rand(ref.shape, generator=gen, dtype=torch.float64) + 0.5
    ours.backward(g.to(dtype))
    ref.backward(g)
    for a, b in zip(ours_in, ref_in):
        assert a.grad.dtype == dtype
        assert_close(np_of(a.grad), np_of(b.grad), like(dtype))


CE_SHAPES = [(6, 5), (5,), (3, 4, 2, 3)]


def ce_case(shape, soft, options, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    k = shape[1] if len(shape) > 1 else shape[0]
    tshape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    if soft:
        target = torch.softmax(
            torch.randn(shape, generator=gen, dtype=torch.float64), dim=1 if len(shape) > 1 else 0
        )
    else:
        target = torch.randint(0, k, tshape, generator=gen)
        if options and target.dim():
            target.view(-1)[1] = 7  # ignored
    kw = {}
    if options:
        kw = dict(
            weight=torch.rand(k, generator=gen, dtype=torch.float64) + 0.5, label_smoothing=0.2
        )
        if not soft:  # PyTorch refuses ignore_index with probability targets
            kw["ignore_index"] = 7
    return x, target, kw


@pytest.mark.parametrize("dtype", DTYPES, ids=NAMES.get)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("options", [False, True], ids=["plain", "options"])
@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
def test_cross_entropy_matches_torch(shape, options, soft, reduction, dtype):
    x, target, kw = ce_case(shape, soft, options)
    weight = kw.pop("weight", None)

    def ours(a):
        return st.cross_entropy(
            a,
            target.to(dtype) if soft else target,
            weight=None if weight is None else weight.to(dtype),
            reduction=reduction,
            **kw,
        )

    def ref(a):
        return F.cross_entropy(a, target, weight=weight, reduction=reduction, **kw)

    check_against_torch(ours, ref, [x], reduction, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=NAMES.get)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(6, 5), (), (3, 4, 5)], ids=str)
def test_bce_with_logits_matches_torch(shape, reduction, dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    y = torch.rand(shape, generator=gen, dtype=torch.float64)
    w = torch.rand(shape[-1:], generator=gen, dtype=torch.float64) + 0.5
    pw = torch.rand(shape[-1:], generator=gen, dtype=torch.float64) * 3
    check_against_torch(
        lambda a: st.binary_cross_entropy_with_logits(
            a, y.to(dtype), w.to(dtype), reduction=reduction, pos_weight=pw.to(dtype)
        ),
        lambda a: F.binary_cross_entropy_with_logits(a, y, w, reduction=reduction, pos_weight=pw),
        [x],
        reduction,
        dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=NAMES.get)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [False, True], ids=["plain", "options"])
def test_linear_cross_entropy_matches_torch(options, reduction, dtype):
    gen = torch.Generator().manual_seed(2)
    n, d, v = 37, 16, 300
    h = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(v, d, generator=gen, dtype=torch.float64) * 0.3
    b = torch.randn(v, generator=gen, dtype=torch.float64)
    t = torch.randint(0, v, (n,), generator=gen)
    kw = {}
    if options:
        t[3] = -5
        kw = dict(
            weight=torch.rand(v, generator=gen, dtype=torch.float64) + 0.5,
            ignore_index=-5,
            label_smoothing=0.1,
        )
    cw = kw.pop("weight", None)
    ours_in = [a.to(dtype).clone().requires_grad_() for a in (h, w, b)]
    ref_in = [a.clone().requires_grad_() for a in (h, w, b)]
    ours = st.linear_cross_entropy(
        ours_in[0],
        ours_in[1],
        t,
        linear_bias=ours_in[2],
        weight=None if cw is None else cw.to(dtype),
        reduction=reduction,
        **kw,
    )
    ref = F.linear_cross_entropy(
        ref_in[0], ref_in[1], t, linear_bias=ref_in[2], weight=cw, reduction=reduction, **kw
    )
    g = torch.rand(ref.shape, generator=gen, dtype=torch.float64) + 0.5
    ours.backward(g.to(dtype))
    ref.backward(g)
    np_dtype = NAMES[dtype]
    assert_gemm_close(np_of(ours), np_of(ref), np_dtype)
    for a, r in zip(ours_in, ref_in):
        assert a.grad.dtype == dtype
        assert_gemm_close(np_of(a.grad), np_of(r.grad), np_dtype)


def test_linear_cross_entropy_unbatched_and_half():
    gen = torch.Generator().manual_seed(3)
    h, w = torch.randn(8, generator=gen), torch.randn(20, 8, generator=gen)
    t = torch.tensor(4)
    for red in ("mean", "none"):
        ours = st.linear_cross_entropy(h, w, t, reduction=red)
        ref = F.linear_cross_entropy(h.double(), w.double(), t, reduction=red)
        assert ours.shape == ref.shape
        assert_gemm_close(np_of(ours), np_of(ref), "float32")
    hb, wb = h.bfloat16().requires_grad_(), w.bfloat16().requires_grad_()
    loss = st.linear_cross_entropy(hb[None], wb, t[None])
    loss.backward()
    assert loss.dtype == hb.grad.dtype == wb.grad.dtype == torch.bfloat16
    ref_h, ref_w = h.bfloat16().double().requires_grad_(), w.bfloat16().double().requires_grad_()
    F.linear_cross_entropy(ref_h[None], ref_w, t[None]).backward()
    assert_gemm_close(np_of(hb.grad), np_of(ref_h.grad), "bfloat16")


GRADCHECK_CASES = {
    "ce-index": lambda x, t, p: st.cross_entropy(x, t, reduction="sum"),
    "ce-options": lambda x, t, p: st.cross_entropy(
        x,
        t,
        weight=torch.arange(1.0, 6.0, dtype=torch.float64),
        ignore_index=2,
        label_smoothing=0.3,
        z_loss=0.01,
        softcap=3.0,
    ),
    "ce-prob": lambda x, t, p: st.cross_entropy(x, p, reduction="none", label_smoothing=0.1),
    "bce": lambda x, t, p: st.binary_cross_entropy_with_logits(
        x,
        p,
        torch.linspace(0.5, 1.5, 5, dtype=torch.float64),
        pos_weight=torch.linspace(0.2, 3.0, 5, dtype=torch.float64),
        reduction="none",
    ),
}


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck(case):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 2, 4, 1, 2, 3])
    p = torch.softmax(torch.randn(6, 5, generator=gen, dtype=torch.float64), dim=1)
    assert torch.autograd.gradcheck(lambda a: GRADCHECK_CASES[case](a, t, p), (x,))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_linear(reduction):
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 8, 3, -100, 5, 1, 1])
    assert torch.autograd.gradcheck(
        lambda h, w, b: st.linear_cross_entropy(
            h, w, t, linear_bias=b, reduction=reduction, label_smoothing=0.2, z_loss=0.01
        ),
        (h, w, b),
    )


def test_modules_match_torch_modules():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 6, (10,), generator=gen)
    w = torch.rand(6, generator=gen, dtype=torch.float64)
    pairs = [
        (
            st.CrossEntropyLoss(w, label_smoothing=0.1),
            torch.nn.CrossEntropyLoss(w, label_smoothing=0.1),
            t,
        ),
        (st.CrossEntropyLoss(reduction="sum"), torch.nn.CrossEntropyLoss(reduction="sum"), t),
        (
            st.BCEWithLogitsLoss(pos_weight=w),
            torch.nn.BCEWithLogitsLoss(pos_weight=w),
            torch.rand(10, 6, generator=gen, dtype=torch.float64),
        ),
    ]
    with pytest.warns(UserWarning, match="size_average"):  # PyTorch's legacy arguments
        pairs.append(
            (
                st.CrossEntropyLoss(size_average=False),
                torch.nn.CrossEntropyLoss(size_average=False),
                t,
            )
        )
    for ours, ref, target in pairs:
        assert isinstance(ours, type(ref))
        assert_close(ours(x, target).item(), ref(x, target).item())
    torch.manual_seed(0)
    ref = torch.nn.LinearCrossEntropyLoss(6, 11, bias=True, dtype=torch.float64)
    ours = st.LinearCrossEntropyLoss(6, 11, bias=True, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    t11 = torch.randint(0, 11, (10,), generator=gen)
    assert_close(ours(x, t11).item(), ref(x, t11).item())
    with pytest.raises(ValueError, match="out_features"):
        st.LinearCrossEntropyLoss(6, 11, out_features=(2,))


def test_inplace_writes_gradient_over_the_logits():
    gen = torch.Generator().manual_seed(7)
    h = torch.randn(8, 4, generator=gen, requires_grad=True)
    lin = torch.nn.Linear(4, 50)
    t = torch.randint(0, 50, (8,), generator=gen)
    grads = []
    for inplace in (False, True):
        h.grad = None
        logits = lin(h)
        loss = st.cross_entropy(logits, t, inplace=inplace, label_smoothing=0.1)
        if inplace:  # the logits now hold d loss / d logits (mean over 8 rows)
            expected = torch.softmax(lin(h), 1) / 8 - 0.1 / 50 / 8
            expected[torch.arange(8), t] -= 0.9 / 8
            torch.testing.assert_close(logits.detach(), expected, rtol=2e-5, atol=1e-7)
        (loss * 2).backward()
        grads.append(h.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)

    with pytest.raises(RuntimeError, match="leaf"):
        st.cross_entropy(torch.randn(3, 4, requires_grad=True), t[:3], inplace=True)
    # exp saves its output for backward: overwriting it must fail loudly, not go wrong.
    logits = torch.exp(lin(h))
    loss = st.cross_entropy(logits, t, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    loss = st.cross_entropy(lin(h), t, inplace=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace=True"):
        loss.backward()


@pytest.mark.parametrize("fn", ["ce", "bce", "linear"])
def test_backward_twice_and_no_grad(fn):
    """retain_graph: the second backward recomputes (the first handed its buffer over)."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 6, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, 4])
    call = {
        "ce": lambda: st.cross_entropy(x, t),
        "bce": lambda: st.binary_cross_entropy_with_logits(x, torch.ones(5, 6).double()),
        "linear": lambda: st.linear_cross_entropy(x, w, t),
    }[fn]
    loss = call()
    loss.backward(retain_graph=True)
    once = x.grad.clone()
    loss.backward(torch.tensor(3.0, dtype=torch.float64))
    torch.testing.assert_close(x.grad, 4 * once)
    with torch.no_grad():
        again = call()
    assert not again.requires_grad
    assert again.item() == loss.item()


def test_layouts_and_zero_copy():
    gen = torch.Generator().manual_seed(9)
    base = torch.randn(7, 9, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 7, (9,), generator=gen)
    for x in (base.t(), base.t()[::2], base[:1].expand(9, 9)[:, :7]):
        xs = x.clone().requires_grad_()
        xr = x.contiguous().requires_grad_()
        tt = t[: x.shape[0]]
        st.cross_entropy(xs, tt, reduction="sum").backward()
        F.cross_entropy(xr, tt, reduction="sum").backward()
        assert_close(np_of(xs.grad), np_of(xr.grad))
        assert_close(st.cross_entropy(x, tt).item(), F.cross_entropy(xr, tt).item())
    for dtype in DTYPES:
        x = base.to(dtype).t()
        view = st._to_numpy(x, "input")
        assert view.dtype.itemsize == x.element_size()
        assert view.ctypes.data == x.data_ptr() and view.strides == tuple(
            s * x.element_size() for s in x.stride()
        )


def test_memory_is_one_gradient_or_none():
    """The forward keeps the gradient and nothing else of N x K; inplace keeps nothing."""
    n, k = 256, 4096
    nbytes = n * k * 4
    lin = torch.nn.Linear(8, k)
    h = torch.randn(n, 8)
    t = torch.randint(0, k, (n,))
    for inplace, limit in ((False, 1.1 * nbytes), (True, 0.05 * nbytes)):
        logits = lin(h)
        tracemalloc.start()
        loss = st.cross_entropy(logits, t, inplace=inplace)
        loss.backward()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < limit, (inplace, peak, nbytes)


def test_errors_are_clear():
    x = torch.randn(4, 3)
    t = torch.tensor([0, 1, 2, 0])
    with pytest.raises(TypeError, match="on meta"):
        st.cross_entropy(torch.empty(4, 3, device="meta"), t)
    with pytest.raises(TypeError, match="torch.Tensor"):
        st.cross_entropy(x.numpy(), t)
    with pytest.raises(RuntimeError, match="no gradient with respect to target"):
        st.cross_entropy(x, torch.rand(4, 3, requires_grad=True))
    with pytest.raises(RuntimeError, match="no gradient with respect to weight"):
        st.binary_cross_entropy_with_logits(x, torch.rand(4, 3), torch.rand(3, requires_grad=True))
    with pytest.raises(IndexError, match="3"):
        st.cross_entropy(x, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="shape"):
        st.cross_entropy(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="class-index"):
        st.linear_cross_entropy(x, torch.randn(5, 3), torch.rand(4, 5))
    with pytest.raises(ValueError):
        st.linear_cross_entropy(x, torch.randn(5, 2), t)
    # Nothing was written to the logits by the failed in-place call.
    logits = torch.nn.Linear(3, 3)(x)
    before = logits.detach().clone()
    with pytest.raises(IndexError):
        st.cross_entropy(logits, torch.tensor([0, 1, 9, 0]), inplace=True)
    assert torch.equal(logits.detach(), before)


# torch.compile / torch.export: the losses are torch.library custom operators there.
_needs_custom_op = pytest.mark.skipif(
    not st._ops.AVAILABLE, reason="torch.library.custom_op needs PyTorch >= 2.4"
)
# Inductor's own use of a deprecated torch API (torch 2.13), not ours.
_inductor_warning = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)


def compiler_test(f):
    return _needs_custom_op(_inductor_warning(f))


def compile_cases():
    """(name, loss function of (x, w, b), its inputs): every loss and module, reduced and
    'none', with the options that change the fused kernel's work."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 5, (6,), generator=gen)
    soft = torch.softmax(torch.randn(6, 5, generator=gen, dtype=torch.float64), 1)
    cw = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    w = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    b = torch.randn(7, generator=gen, dtype=torch.float64)
    t7 = torch.randint(0, 7, (6,), generator=gen)
    ce_mod = st.CrossEntropyLoss(cw, label_smoothing=0.1)
    bce_mod = st.BCEWithLogitsLoss(pos_weight=cw)
    torch.manual_seed(0)
    lin_mod = st.LinearCrossEntropyLoss(5, 7, bias=True, dtype=torch.float64)
    return [
        ("ce", lambda x: st.cross_entropy(x, t, z_loss=0.01), x),
        (
            "ce_soft_none",
            lambda x: st.cross_entropy(x, soft, reduction="none", label_smoothing=0.2, softcap=3.0),
            x,
        ),
        ("ce_module", lambda x: 2 * ce_mod(x, t), x),
        ("bce_none", lambda x: st.binary_cross_entropy_with_logits(x, soft, reduction="none"), x),
        ("bce_module", lambda x: bce_mod(x, soft), x),
        ("linear", lambda x: st.linear_cross_entropy(x, w, t7, linear_bias=b), x),
        (
            "linear_none",
            lambda x: st.linear_cross_entropy(x, w, t7, reduction="none", label_smoothing=0.1),
            x,
        ),
        ("linear_module", lambda x: 3 * lin_mod(x, t7), x),
        (
            "linear_budget",  # 1 KiB: the recompute schedule at its smallest tiles
            lambda x: st.linear_cross_entropy(x, w, t7, linear_bias=b, max_memory_bytes=1 << 10),
            x,
        ),
    ]


@compiler_test
@pytest.mark.parametrize("case", range(9), ids=[c[0] for c in compile_cases()])
def test_compile_fullgraph_equals_eager(case):
    """No graph break (fullgraph=True raises on one); the compiled loss and gradients are the
    eager ones, bit for bit (the same kernel calls; backward scales by the same factors). The
    upstream gradient is random, so backward's scaling is tested, not just 1."""
    name, fn, x = compile_cases()[case]
    compiled = torch.compile(fn, fullgraph=True, backend="inductor")
    results = []
    for f in (fn, compiled):
        xi = x.clone().requires_grad_()
        loss = f(xi)
        g = (
            torch.rand(loss.shape, generator=torch.Generator().manual_seed(1), dtype=loss.dtype)
            + 0.5
        )
        loss.backward(g)
        results.append((loss.detach(), xi.grad))
        with torch.no_grad():  # the loss-only operator
            results.append((f(x), None))
    torch.testing.assert_close(results[0], results[2], rtol=0, atol=0)
    torch.testing.assert_close(results[1], results[3], rtol=0, atol=0)
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)


@compiler_test
def test_compiled_training_step_has_one_graph():
    """A training step with the loss inside: one graph, no break, gradients as eager."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
    loss_fn = st.CrossEntropyLoss()
    x, t = torch.randn(16, 4), torch.randint(0, 5, (16,))

    def step(x, t):
        return loss_fn(model(x), t)

    explained = torch._dynamo.explain(step)(x, t)
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    ops = [str(n.target) for g in explained.graphs for n in g.graph.nodes]
    assert any("sce_rs.cross_entropy_and_grad" in op for op in ops), ops
    step(x, t).backward()
    eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.compile(step, fullgraph=True)(x, t).backward()
    torch.testing.assert_close([p.grad for p in model.parameters()], eager)


class _Head(torch.nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.proj = torch.nn.Linear(4, 6, dtype=torch.float64)
        self.loss = loss

    def forward(self, x, t):
        return self.loss(self.proj(x), t)


@compiler_test
@pytest.mark.parametrize("which", ["ce", "bce", "linear"])
def test_export_gives_a_program_that_runs(which):
    torch.manual_seed(4)
    x = torch.randn(5, 4, dtype=torch.float64)
    if which == "ce":
        model, t, op = (
            _Head(st.CrossEntropyLoss(label_smoothing=0.1)),
            torch.tensor([0, 5, 2, 1, 3]),
            "cross_entropy",
        )
    elif which == "bce":
        model, t, op = (
            _Head(st.BCEWithLogitsLoss()),
            torch.rand(5, 6, dtype=torch.float64),
            "binary_cross_entropy_with_logits",
        )
    else:
        model = st.LinearCrossEntropyLoss(4, 9, bias=True, dtype=torch.float64)
        t, op = torch.tensor([0, 8, 2, 1, 3]), "linear_cross_entropy"
    program = torch.export.export(model, (x, t))
    targets = {str(n.target) for n in program.graph.nodes}
    assert any(s.startswith(f"sce_rs.{op}") for s in targets), targets
    torch.testing.assert_close(program.module()(x, t), model(x, t), rtol=0, atol=0)
    x2 = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(program.module()(x2, t), model(x2, t), rtol=0, atol=0)


def opcheck_cases():
    gen = torch.Generator().manual_seed(12)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    t = torch.tensor([0, 3, 1, 2])
    t3 = torch.randint(0, 4, (2, 3), generator=gen)
    soft = torch.softmax(torch.randn(4, 4, generator=gen, dtype=torch.float64), 1)
    cw = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5
    ce = "cross_entropy"
    bce = "binary_cross_entropy_with_logits"
    lin = "linear_cross_entropy"
    cases = []
    for suffix in ("", "_and_grad"):
        cases += [
            (ce + suffix, (r(4, 4), t, None, 1, -100, "mean", 0.0, 0.0, None)),
            (ce + suffix, (r(2, 4, 3), t3, cw, 1, 1, "none", 0.1, 0.01, 5.0)),
            (ce + suffix, (r(4, 4), soft, cw, 1, -100, "sum", 0.2, 0.0, None)),
            (ce + suffix, (r(4), torch.tensor(2), None, 0, -100, "none", 0.0, 0.0, None)),
            (bce + suffix, (r(4, 4), soft, cw, cw, "mean")),
            (bce + suffix, (r(3, 4), soft[:3], None, None, "none")),
            (lin + suffix, (r(4, 3), r(5, 3), r(5), t, None, -100, "mean", 0.0, 0.0, None)),
            (lin + suffix, (r(4, 3), r(5, 3), None, t, cw[:1].expand(5), 3, "sum", 0.1, 0.0, 2.0)),
            (lin + suffix, (r(4, 3), r(5, 3), r(5), t, None, -100, "mean", 0.1, 0.0, None, 1024)),
        ]
    cases.append((lin, (r(4, 3), r(5, 3), r(5), t, None, -100, "none", 0.0, 0.01, None)))
    return cases


@compiler_test
@pytest.mark.parametrize("case", range(19))
def test_opcheck(case):
    """torch.library.opcheck: schema, fake shapes/dtypes, autograd registration and
    AOT dispatch (static and dynamic shapes) of every operator."""
    name, args = opcheck_cases()[case]
    torch.library.opcheck(getattr(torch.ops.sce_rs, name).default, args)


@compiler_test
def test_operators_share_memory_with_numpy(monkeypatch):
    """The operators hand the kernels views of the tensors and wrap the kernels' arrays:
    no copy in, none out."""
    seen = {}
    real = st._core.cross_entropy_and_grad

    def watch(x, t, **kwargs):
        seen["x"] = x
        seen["out"] = real(x, t, **kwargs)
        return seen["out"]

    monkeypatch.setattr(st._core, "cross_entropy_and_grad", watch)
    x = torch.randn(6, 9, dtype=torch.float32).t()  # non-contiguous: read in place too
    t = torch.randint(0, 6, (9,))
    loss, grad = torch.ops.sce_rs.cross_entropy_and_grad(
        x, t, None, 1, -100, "none", 0.0, 0.0, None
    )
    assert seen["x"].ctypes.data == x.data_ptr()
    assert grad.data_ptr() == seen["out"][1].ctypes.data
    assert loss.data_ptr() == seen["out"][0].ctypes.data


@compiler_test
def test_operators_check_versions():
    """The loss-only operator's backward reads its inputs again: one changed in place after
    the forward pass fails PyTorch's version check, as in the eager Functions."""
    lin = torch.nn.Linear(3, 5, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True) * 1.0
    t = torch.tensor([0, 1, 2, 4])
    loss = torch.ops.sce_rs.linear_cross_entropy(
        x, lin.weight, lin.bias, t, None, -100, "none", 0.0, 0.0, None
    )
    with torch.no_grad():
        x.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.sum().backward()


@compiler_test
# Dynamo's own handling of autograd.Function in torch 2.13, not ours.
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
def test_without_custom_ops_compile_breaks_the_graph(monkeypatch):
    """PyTorch < 2.4 (no torch.library.custom_op), simulated: the autograd Functions run, and
    torch.compile gets through them with a graph break, as before the operators."""
    monkeypatch.setattr(st._ops, "AVAILABLE", False)
    x = torch.randn(5, 4, dtype=torch.float64)
    t = torch.tensor([0, 3, 1, 2, 0])

    def step(x):
        return st.cross_entropy(torch.tanh(x), t) * 2

    xs = [x.clone().requires_grad_() for _ in range(2)]
    # The warning a user sees today: the kernel is opaque to Dynamo.
    with pytest.warns(UserWarning, match="Dynamo does not know how to trace"):
        assert torch._dynamo.explain(step)(x).graph_break_count >= 1
        losses = [step(xs[0]), torch.compile(step, backend="eager")(xs[1])]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=0, atol=0)


@compiler_test
def test_inplace_is_eager_only():
    h = torch.randn(4, 3)
    lin = torch.nn.Linear(3, 5)
    t = torch.tensor([0, 1, 2, 4])
    for loss in (
        lambda: st.cross_entropy(lin(h), t, inplace=True),
        lambda: st.binary_cross_entropy_with_logits(lin(h), torch.rand(4, 5), inplace=True),
    ):
        with pytest.raises(Exception, match="eagerly only"):
            torch.compile(loss, fullgraph=True, backend="eager")()
        loss().backward()  # eagerly it works as before


def mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5))


@pytest.mark.parametrize("variant", ["cross_entropy", "inplace", "linear_head"])
def test_training_loop_follows_torch(variant):
    """An MLP on synthetic data, trained twice from the same start: PyTorch's loss against
    sce_rs.torch's. In float64 the losses agree step by step to 1e-10 relative."""
    gen = torch.Generator().manual_seed(10)
    data = torch.randn(128, 10, generator=gen, dtype=torch.float64)
    labels = (data[:, :5].argmax(1) + (data[:, 5] > 1).long()) % 5
    models = [mlp(0).double(), mlp(0).double()]
    if variant == "linear_head":
        heads = [
            torch.nn.LinearCrossEntropyLoss(32, 5, bias=True, dtype=torch.float64),
            st.LinearCrossEntropyLoss(32, 5, bias=True, dtype=torch.float64),
        ]
        heads[1].load_state_dict(heads[0].state_dict())
        models = [torch.nn.ModuleList([m[:2], h]) for m, h in zip(models, heads)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9) for m in models]
    history = []
    for step in range(30):
        batch = slice(32 * (step % 4), 32 * (step % 4 + 1))
        losses = []
        for i, (model, opt) in enumerate(zip(models, opts)):
            opt.zero_grad()
            if variant == "linear_head":
                loss = model[1](model[0](data[batch]), labels[batch])
            else:
                logits = model(data[batch])
                loss = (
                    F.cross_entropy(logits, labels[batch], label_smoothing=0.05)
                    if i == 0
                    else st.cross_entropy(
                        logits, labels[batch], label_smoothing=0.05, inplace=variant == "inplace"
                    )
                )
            loss.backward()
            opt.step()
            losses.append(loss.item())
        history.append(losses)
    history = np.array(history)
    np.testing.assert_allclose(history[:, 1], history[:, 0], rtol=1e-10)
    assert history[-4:, 0].mean() < 0.6 * history[:4, 0].mean()  # it did learn


def test_linear_default_budget_is_the_kernels():
    import inspect

    import sce_rs

    for fn in (sce_rs.linear_cross_entropy, sce_rs.linear_cross_entropy_and_grad):
        default = inspect.signature(fn).parameters["max_memory_bytes"].default
        assert st._ops.LINEAR_MAX_MEMORY_BYTES == default
    assert inspect.signature(st.linear_cross_entropy).parameters["max_memory_bytes"].default == (
        default
    )


@pytest.mark.parametrize(
    "budget, error", [(-1, ValueError), (0, ValueError), ("64M", TypeError)], ids=str
)
def test_linear_max_memory_bytes_rejects_a_bad_budget(budget, error):
    h = torch.randn(4, 8, dtype=torch.float64)
    w = torch.randn(6, 8, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3])
    with pytest.raises(error):
        st.linear_cross_entropy(h, w, t, max_memory_bytes=budget)


@_inductor_warning
@pytest.mark.parametrize("budget", [1 << 16, None], ids=["64KiB", "default"])
@pytest.mark.parametrize("path", ["function", "module", "compiled"])
def test_linear_max_memory_bytes_reaches_the_kernel(path, budget, monkeypatch):
    """max_memory_bytes goes from the function, the module and the compiled operators (and
    the autograd Function that PyTorch < 2.4 runs everywhere: the eager path here) to the
    kernel. The loss and gradients are the kernel's with that budget, bit for bit, and 64 KiB
    (the recompute schedule in tiles of 64 classes) gives the default's within the GEMMs'
    rounding."""
    import sce_rs

    if path == "compiled" and not st._ops.AVAILABLE:
        pytest.skip("torch.library.custom_op needs PyTorch >= 2.4")
    gen = torch.Generator().manual_seed(21)
    n, d, v = 300, 16, 5000
    h = torch.randn(n, d, generator=gen)
    w = torch.randn(v, d, generator=gen) / 4
    b = torch.randn(v, generator=gen)
    t = torch.randint(0, v, (n,), generator=gen)
    kw = {} if budget is None else {"max_memory_bytes": budget}
    arrays = (h.numpy(), w.numpy(), t.numpy(), b.numpy())
    want = sce_rs.linear_cross_entropy_and_grad(*arrays, label_smoothing=0.1, **kw)
    default = sce_rs.linear_cross_entropy_and_grad(*arrays, label_smoothing=0.1)
    seen = []
    real = st._core.linear_cross_entropy_and_grad

    def spy(*args, **kwargs):
        seen.append(kwargs["max_memory_bytes"])
        return real(*args, **kwargs)

    monkeypatch.setattr(st._core, "linear_cross_entropy_and_grad", spy)
    hs, ws, bs = (x.clone().requires_grad_() for x in (h, w, b))
    if path == "module":
        mod = st.LinearCrossEntropyLoss(d, v, bias=True, label_smoothing=0.1, **kw)
        with torch.no_grad():
            mod.linear.weight.copy_(w)
            mod.linear.bias.copy_(b)
        hs, ws, bs = hs, mod.linear.weight, mod.linear.bias
        loss = mod(hs, t)
    else:

        def fn(x, weight, bias):
            return st.linear_cross_entropy(
                x, weight, t, linear_bias=bias, label_smoothing=0.1, **kw
            )

        if path == "compiled":
            fn = torch.compile(fn, fullgraph=True, backend="aot_eager")
        loss = fn(hs, ws, bs)
    loss.backward()
    assert seen and set(seen) == {budget or st._ops.LINEAR_MAX_MEMORY_BYTES}, seen
    got = [loss.detach(), hs.grad, ws.grad, bs.grad]
    for g, wnt, ref in zip(got, want, default):
        np.testing.assert_array_equal(g.numpy(), wnt)
        assert_gemm_close(g.numpy(), ref, np.float32)

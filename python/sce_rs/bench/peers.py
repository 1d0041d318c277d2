"""The peer registry: one class per library, each turning (operation, inputs) into a `Bench`.

A peer converts the inputs once, outside the timed region, and returns None for an operation it
has no form of in that operation's mode (see `cases.OPS`). Optional libraries are imported
through `optional()`, so a missing one is a note (`Unavailable`), never a failure, and the
package type-checks without them installed.

Operations in `cases.RESTORED_OPS` consume their input (sce_rs writes over it); every peer's
`Bench` for them restores its own copy of the logits in `reset`, which the timing runs untimed
before every call, so each repeat of each library sees the same logits and the same cache state.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, ClassVar

import numpy as np
from numpy.typing import NDArray

import sce_rs
from sce_rs import reference

from .cases import RESTORED_OPS, SMOOTHING, TOP_K

Array = NDArray[Any]


class Unavailable(Exception):
    """A peer (or a function of it) that cannot run here; the message says why."""


def optional(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise Unavailable(f"not installed ({e.name})") from e


@dataclass
class Bench:
    """A zero-argument call to time, and what must run untimed before each call."""

    call: Callable[[], object]
    reset: Callable[[], None] | None = None
    keep: object = None  # what must live as long as `call` (a buffer bound by raw pointer)

    def __call__(self) -> object:
        if self.reset is not None:
            self.reset()
        return self.call()


def _restorer(src: Array, dst: Array) -> Callable[[], None]:
    return lambda: np.copyto(dst, src)


def multilabel(x: Array, t: Array) -> Array:
    """The 0/1 labels of the binary losses: the one-hot of the class targets, in x's dtype."""
    return (np.arange(x.shape[-1]) == t[:, None]).astype(x.dtype)


class Peer:
    name: ClassVar[str]

    def build(self, op: str, x: Array, t: Array, threads: int) -> Bench | None:
        raise NotImplementedError


class SceRs(Peer):
    name = "sce_rs"

    def build(self, op: str, x: Array, t: Array, threads: int) -> Bench | None:
        if op == "cross_entropy":
            return Bench(lambda: sce_rs.cross_entropy(x, t))
        if op in ("cross_entropy_and_grad", "smoothed_cross_entropy_and_grad"):
            # The in-place form a training step uses: the gradient over the logits.
            work = np.empty_like(x)
            eps = SMOOTHING if op.startswith("smoothed") else 0.0
            return Bench(
                lambda: sce_rs.cross_entropy_and_grad(work, t, label_smoothing=eps, out=work),
                _restorer(x, work),
            )
        if op == "softmax_out":
            buf = np.empty_like(x)
            return Bench(lambda: sce_rs.softmax(x, out=buf))
        if op == "softmax_inplace":
            work = np.empty_like(x)
            return Bench(lambda: sce_rs.softmax(work, out=work), _restorer(x, work))
        if op == "softmax":
            return Bench(lambda: sce_rs.softmax(x))
        if op == "log_softmax":
            return Bench(lambda: sce_rs.log_softmax(x))
        if op == "token_logprobs":
            fn = getattr(sce_rs, "token_logprobs", None)
            if fn is None:
                raise Unavailable(f"sce_rs {sce_rs.__version__} has no token_logprobs")
            return Bench(lambda: fn(x, t, top_k=TOP_K))
        if op == "bce_with_logits":
            y = multilabel(x, t)
            return Bench(lambda: sce_rs.binary_cross_entropy_with_logits(x, y))
        if op == "bce_with_logits_and_grad":
            y = multilabel(x, t)
            return Bench(lambda: sce_rs.binary_cross_entropy_with_logits_and_grad(x, y))
        return None


def _lse(z: Array) -> Array:
    m = z.max(axis=-1, keepdims=True)
    return np.log(np.exp(z - m).sum(axis=-1)) + m[:, 0]


class NumPy(Peer):
    """Vectorized NumPy, as a user would write it."""

    name = "numpy"

    def build(self, op: str, x: Array, t: Array, threads: int) -> Bench | None:
        rows = np.arange(x.shape[0])
        if op == "cross_entropy":
            return Bench(lambda: float(np.mean(_lse(x) - x[rows, t])))
        if op == "softmax":

            def softmax() -> Array:
                e = np.exp(x - x.max(axis=-1, keepdims=True))
                e /= e.sum(axis=-1, keepdims=True)
                return e

            return Bench(softmax)
        if op in ("softmax_out", "softmax_inplace"):
            inplace = op == "softmax_inplace"
            buf = np.empty_like(x)
            src = buf if inplace else x

            def softmax_into() -> Array:
                np.subtract(src, src.max(axis=-1, keepdims=True), out=buf)
                np.exp(buf, out=buf)
                return np.divide(buf, buf.sum(axis=-1, keepdims=True), out=buf)

            return Bench(softmax_into, _restorer(x, buf) if inplace else None)
        if op == "log_softmax":
            return Bench(lambda: x - _lse(x)[:, None])
        if op == "cross_entropy_and_grad":
            work = np.empty_like(x)

            def both() -> tuple[float, Array]:
                m = work.max(axis=-1, keepdims=True)
                e = np.exp(work - m)
                s = e.sum(axis=-1, keepdims=True)
                loss = float(np.mean(np.log(s[:, 0]) + m[:, 0] - work[rows, t]))
                e /= s
                e[rows, t] -= 1
                e /= work.shape[0]
                return loss, e

            return Bench(both, _restorer(x, work))
        if op == "bce_with_logits":
            y = multilabel(x, t)
            return Bench(
                lambda: float(np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))))
            )
        return None


class NumPyReference(Peer):
    """`sce_rs.reference`: the textbook formulas, float64 inside."""

    name = "numpy (reference)"

    def build(self, op: str, x: Array, t: Array, threads: int) -> Bench | None:
        if op == "cross_entropy_and_grad":
            work = np.empty_like(x)
            return Bench(lambda: reference.cross_entropy_and_grad(work, t), _restorer(x, work))
        fn: Callable[[], object] | None = {
            "cross_entropy": lambda: reference.cross_entropy(x, t),
            "softmax": lambda: reference.softmax(x),
            "log_softmax": lambda: reference.log_softmax(x),
        }.get(op)
        return None if fn is None else Bench(fn)


class SciPy(Peer):
    name = "scipy"

    def build(self, op: str, x: Array, t: Array, threads: int) -> Bench | None:
        special = optional("scipy.special")
        rows = np.arange(x.shape[0])
        fn: Callable[[], object] | None = {
            "cross_entropy": lambda: float(np.mean(special.logsumexp(x, axis=-1) - x[rows, t])),
            "softmax": lambda: special.softmax(x, axis=-1),
            "log_softmax": lambda: special.log_softmax(x, axis=-1),
        }.get(op)
        return None if fn is None else Bench(fn)


class Torch(Peer):
    name = "torch"

    def build(self, op: str, x: Array, t: Array, threads: int) -> Bench | None:
        torch = optional("torch")
        F = optional("torch.nn.functional")
        torch.set_num_threads(threads)
        xt, tt = torch.from_numpy(x), torch.from_numpy(t)
        if op == "cross_entropy":
            return Bench(lambda: F.cross_entropy(xt, tt).item())
        if op in ("cross_entropy_and_grad", "smoothed_cross_entropy_and_grad"):
            leaf = xt.clone().requires_grad_()
            eps = SMOOTHING if op.startswith("smoothed") else 0.0

            def restore() -> None:
                leaf.grad = None
                with torch.no_grad():
                    leaf.copy_(xt)

            def both() -> float:
                loss = F.cross_entropy(leaf, tt, label_smoothing=eps)
                loss.backward()
                return float(loss.item())

            return Bench(both, restore)
        if op == "softmax_out":
            buf = torch.empty_like(xt)
            return Bench(lambda: torch._softmax(xt, -1, False, out=buf))
        if op == "softmax":
            return Bench(lambda: torch.softmax(xt, -1))
        if op == "log_softmax":
            return Bench(lambda: torch.log_softmax(xt, -1))
        if op == "token_logprobs":
            # What a scoring loop does without a fused kernel: the N x K log-probabilities,
            # then a pass over them per statistic.
            def score() -> tuple[Any, ...]:
                lp = torch.log_softmax(xt, -1)
                target = lp.gather(-1, tt[:, None])[:, 0]
                greedy = lp.argmax(-1) == tt
                top = torch.topk(lp, TOP_K, dim=-1)
                entropy = -(lp.exp() * lp).sum(-1)
                return target, greedy, top.values, top.indices, entropy

            return Bench(score)
        if op == "bce_with_logits":
            yt = torch.from_numpy(multilabel(x, t))
            return Bench(lambda: F.binary_cross_entropy_with_logits(xt, yt).item())
        if op == "bce_with_logits_and_grad":
            yt = torch.from_numpy(multilabel(x, t))
            leaf = xt.clone().requires_grad_()

            def bce_both() -> tuple[float, Any]:
                leaf.grad = None
                loss = F.binary_cross_entropy_with_logits(leaf, yt)
                loss.backward()
                return float(loss.item()), leaf.grad

            return Bench(bce_both)
        return None


class Jax(Peer):
    """`jax.jit` of each operation, compiled in the untimed warm-up call."""

    name = "jax"

    def build(self, op: str, x: Array, t: Array, threads: int) -> Bench | None:
        jax = optional("jax")
        jnp = optional("jax.numpy")
        if x.dtype == np.float64 and not jax.config.jax_enable_x64:
            raise Unavailable("float64 needs JAX_ENABLE_X64=1 before jax is imported")

        def ce(z: Any, t: Any) -> Any:
            lse = jax.nn.logsumexp(z, axis=-1)
            return jnp.mean(lse - jnp.take_along_axis(z, t[:, None], axis=-1)[:, 0])

        def smoothed(z: Any, t: Any) -> Any:
            # PyTorch's label smoothing: (1 - eps) of the class's loss, eps of the mean of all.
            lse = jax.nn.logsumexp(z, axis=-1)
            nll = lse - jnp.take_along_axis(z, t[:, None], axis=-1)[:, 0]
            return jnp.mean((1 - SMOOTHING) * nll + SMOOTHING * (lse - z.mean(axis=-1)))

        def score(z: Any, t: Any) -> Any:
            lp = jax.nn.log_softmax(z, axis=-1)
            target = jnp.take_along_axis(lp, t[:, None], axis=-1)[:, 0]
            greedy = jnp.argmax(lp, axis=-1) == t
            values, ids = jax.lax.top_k(lp, TOP_K)
            entropy = -(jnp.exp(lp) * lp).sum(-1)
            return target, greedy, values, ids, entropy

        def bce(z: Any, y: Any) -> Any:
            return jnp.mean(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z))))

        fns: dict[str, Callable[..., Any]] = {
            "cross_entropy": ce,
            "cross_entropy_and_grad": jax.value_and_grad(ce),
            "smoothed_cross_entropy_and_grad": jax.value_and_grad(smoothed),
            "softmax": lambda z, t: jax.nn.softmax(z, axis=-1),
            "log_softmax": lambda z, t: jax.nn.log_softmax(z, axis=-1),
            "token_logprobs": score,
            "bce_with_logits": bce,
            "bce_with_logits_and_grad": jax.value_and_grad(bce),
        }
        if op not in fns:
            return None
        fn = jax.jit(fns[op])
        tj = jax.device_put(multilabel(x, t) if op.startswith("bce") else t)
        held = [jax.device_put(x)]
        reset = None
        if op in RESTORED_OPS:
            # JAX arrays are immutable and its gradient is a new array, but its repeats still get
            # fresh logits untimed as the other libraries' do, with the same memory traffic.
            def reset() -> None:
                held[0] = jnp.array(x, copy=True)

        return Bench(lambda: jax.block_until_ready(fn(held[0], tj)), reset)


class OnnxRuntime(Peer):
    name = "onnxruntime"

    def build(self, op: str, x: Array, t: Array, threads: int) -> Bench | None:
        onnx = optional("onnx")
        ort = optional("onnxruntime")
        helper, proto = onnx.helper, onnx.TensorProto
        elem = {np.dtype("float32"): proto.FLOAT, np.dtype("float64"): proto.DOUBLE}
        if x.dtype not in elem or op not in ("cross_entropy", "softmax_out", "softmax"):
            return None
        shape = list(x.shape)
        xin = helper.make_tensor_value_info("x", elem[x.dtype], shape)
        if op == "cross_entropy":
            node = helper.make_node("SoftmaxCrossEntropyLoss", ["x", "t"], ["y"], reduction="mean")
            inputs = [xin, helper.make_tensor_value_info("t", proto.INT64, shape[:1])]
            out = helper.make_tensor_value_info("y", elem[x.dtype], [])
        else:
            node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
            inputs = [xin]
            out = helper.make_tensor_value_info("y", elem[x.dtype], shape)
        graph = helper.make_graph([node], "g", inputs, [out])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        onnx.checker.check_model(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        if op == "cross_entropy":
            feeds = {"x": x, "t": t.astype(np.int64)}
            return Bench(lambda: sess.run(None, feeds))
        if op == "softmax":
            return Bench(lambda: sess.run(None, {"x": x}))
        # softmax_out: the output bound to a buffer allocated once, as sce_rs's out=.
        buf = np.empty_like(x)
        binding = sess.io_binding()
        binding.bind_cpu_input("x", x)
        binding.bind_output("y", "cpu", 0, x.dtype.type, shape, buf.ctypes.data)
        # The binding holds a raw pointer to `buf`: the Bench keeps it alive.
        return Bench(lambda: sess.run_with_iobinding(binding), keep=buf)


PEERS: dict[str, Peer] = {
    p.name: p for p in (SceRs(), NumPy(), NumPyReference(), SciPy(), Torch(), Jax(), OnnxRuntime())
}


# ---------------------------------------------------------------- yardsticks
# Rows that are not a library's form of the operation but put sce_rs's figure in scale: what the
# memory allows, or sce_rs's own simpler call over the same rows.


@dataclass(frozen=True)
class Yardstick:
    name: str
    ops: tuple[str, ...]
    make: Callable[[Array, Array], Callable[[], object]]
    min_elements: int = 0


def _read_write(x: Array, t: Array) -> Callable[[], object]:
    buf = np.empty_like(x)
    return lambda: np.copyto(buf, x)


YARDSTICKS = (
    Yardstick("read pass", ("cross_entropy",), lambda x, t: x.max, 1 << 20),
    Yardstick("read+write pass", ("softmax_out", "softmax_inplace"), _read_write, 1 << 20),
    Yardstick(
        'sce_rs cross_entropy(reduction="none")',
        ("token_logprobs",),
        lambda x, t: lambda: sce_rs.cross_entropy(x, t, reduction="none"),
    ),
)


# ---------------------------------------------------------------- the fused linear form


def accepts_max_memory_bytes() -> bool:
    """Whether the installed sce_rs's linear cross-entropy takes `max_memory_bytes` (tried on a
    one-row call: the extension's functions carry no inspectable signature everywhere)."""
    h, w, t = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32), np.zeros(1, np.int64)
    # Typed loosely: the stubs describe the build being written, not the one installed.
    fn: Callable[..., object] = sce_rs.linear_cross_entropy
    try:
        fn(h, w, t, max_memory_bytes=1 << 24)
    except TypeError as e:
        if "max_memory_bytes" in str(e):
            return False
        raise
    return True


@dataclass
class Linear:
    """Every closure returns the loss and the gradients, which the memory figure does not
    count."""

    name: str
    build: Callable[[bool, Array, Array, Array, int, int | None], Callable[[], tuple[Any, ...]]]


def _sce_rs_linear(
    grad: bool, h: Array, w: Array, t: Array, threads: int, max_memory_bytes: int | None
) -> Callable[[], tuple[Any, ...]]:
    kw: dict[str, Any] = {}
    if max_memory_bytes is not None:
        kw["max_memory_bytes"] = max_memory_bytes
    if grad:
        return lambda: tuple(sce_rs.linear_cross_entropy_and_grad(h, w, t, **kw))
    return lambda: (sce_rs.linear_cross_entropy(h, w, t, **kw),)


def _materialized(
    grad: bool, h: Array, w: Array, t: Array, threads: int, max_memory_bytes: int | None
) -> Callable[[], tuple[Any, ...]]:
    def materialized() -> tuple[Any, ...]:
        logits = h @ w.T
        if not grad:
            return (sce_rs.cross_entropy(logits, t),)
        loss, g = sce_rs.cross_entropy_and_grad(logits, t, out=logits)
        return loss, g @ w, g.T @ h

    return materialized


def _torch_linear(chunked: bool) -> Callable[..., Callable[[], tuple[Any, ...]]]:
    def build(
        grad: bool, h: Array, w: Array, t: Array, threads: int, max_memory_bytes: int | None
    ) -> Callable[[], tuple[Any, ...]]:
        torch = optional("torch")
        F = optional("torch.nn.functional")
        torch.set_num_threads(threads)
        ht, wt, tt = torch.from_numpy(h), torch.from_numpy(w), torch.from_numpy(t)
        options = torch.nn.LinearCrossEntropyOptions() if chunked else None
        if not grad:
            return lambda: (F.linear_cross_entropy(ht, wt, tt, options=options).item(),)
        hl, wl = ht.clone().requires_grad_(), wt.clone().requires_grad_()

        def both() -> tuple[Any, ...]:
            hl.grad = wl.grad = None
            loss = F.linear_cross_entropy(hl, wl, tt, options=options)
            loss.backward()
            return loss.item(), hl.grad, wl.grad

        return both

    return build


LINEAR_PEERS: dict[str, Linear] = {
    p.name: p
    for p in (
        Linear("sce_rs", _sce_rs_linear),
        Linear("numpy+sce_rs (materialized)", _materialized),
        # The yardstick of the loss-only form: one of the products, at BLAS speed.
        Linear("numpy matmul", lambda grad, h, w, t, threads, mmb: lambda: (h @ w.T,)),
        Linear("torch (chunked)", _torch_linear(chunked=True)),
        Linear("torch (reference)", _torch_linear(chunked=False)),
    )
}


def build(peer: str, op: str, x: Array, t: Array, threads: int = 1) -> Bench | None:
    """The `Bench` of one peer's form of one operation (None if it has none)."""
    return PEERS[peer].build(op, x, t, threads)

"""The benchmark tool runs end to end on tiny cases, reports what it measured, and compares like
with like: every repeat of an operation that consumes its input sees the same input, and a mode
(out= or allocating) is never mixed with another in one table."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import sce_rs
from sce_rs import bench, reference
from sce_rs.bench import cli, peers

INSTALLED = [
    p
    for p, module in (
        ("numpy", None),
        ("numpy (reference)", None),
        ("scipy", "scipy"),
        ("torch", "torch"),
        ("jax", "jax"),
        ("onnxruntime", "onnxruntime"),
    )
    if module is None or importlib.util.find_spec(module) is not None
]


def _inputs(n=16, k=300, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, k)) * 3).astype(np.float32), rng.integers(0, k, size=n)


def test_bench_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = [
        "--shape",
        "16x300",
        "--ops",
        "cross_entropy,softmax",
        "--repeat",
        "2",
        "--peers",
        "numpy,numpy (reference)",
        "--json",
        str(out),
    ]
    bench.main(argv)
    text = capsys.readouterr().out
    first = text.splitlines()[0]
    assert f"SIMD backend {sce_rs.simd_backend()}" in first
    assert "CPU " in first and "1 thread(s)" in first
    assert "float32 16x300  cross_entropy" in text
    assert "faster" in text
    data = json.loads(out.read_text())
    assert data["command"][-len(argv) :] == argv
    found = {(r["op"], r["peer"]) for r in data["results"]}
    assert ("cross_entropy", "sce_rs") in found and ("softmax", "numpy") in found
    assert all(r["median_s"] > 0 for r in data["results"])
    assert data["machine"]["simd_backend"] == sce_rs.simd_backend()
    assert data["machine"]["cpu"]


def test_bench_rejects_unknown_ops_and_peers():
    with pytest.raises(SystemExit):
        bench.main(["--ops", "nope"])
    with pytest.raises(SystemExit):
        bench.main(["--peers", "fortran"])


def test_plot_without_matplotlib_is_a_usage_error_before_the_run(monkeypatch, capsys):
    def missing(name):
        raise peers.Unavailable(f"not installed ({name})")

    monkeypatch.setattr(peers, "optional", missing)
    monkeypatch.setattr(cli, "run", lambda *a, **k: pytest.fail("the run started"))
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--shape", "4x3", "--ops", "cross_entropy", "--plot", "x.png"])
    assert exit_info.value.code == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_quick_preset_is_what_make_bench_runs():
    args = cli.parser().parse_args(["--quick", "--ops", "cross_entropy"])
    cases = cli.cases_of(args, cli.parser())
    assert [c.label for c in cases] == [c.label for c in bench.QUICK]
    assert all(c.ops in ((), ("cross_entropy",)) for c in cases)


def test_peer_callables_compute_the_same_loss():
    x, t = _inputs(32, 50)
    ours = float(bench.build("sce_rs", "cross_entropy", x, t).call())
    for peer in INSTALLED:
        b = bench.build(peer, "cross_entropy", x, t)
        assert b is not None, peer
        theirs = b.call()
        theirs = float(np.asarray(theirs[0] if isinstance(theirs, list) else theirs))
        assert abs(ours - theirs) < 1e-5 * abs(theirs), peer


def test_peers_smooth_labels_alike():
    """Every peer's smoothed loss and gradient against the float64 reference of the contract."""
    x, t = _inputs(32, 50)
    eps = bench.cases.SMOOTHING
    want_loss, want_grad = reference.cross_entropy_and_grad(
        x.astype(np.float64), t, label_smoothing=eps
    )
    for peer in ["sce_rs", *INSTALLED]:
        b = bench.build(peer, "smoothed_cross_entropy_and_grad", x, t)
        if b is None:
            continue
        b.reset()
        result = b()
        # PyTorch returns the loss only: its gradient stays on the leaf its restore resets.
        loss, *grad = result if isinstance(result, (tuple, list)) else (result,)
        assert abs(float(np.asarray(loss)) - want_loss) < 1e-5 * abs(want_loss), peer
        for g in grad:
            np.testing.assert_allclose(g, want_grad, rtol=1e-4, atol=1e-7, err_msg=peer)
        assert peer == "torch" or grad, f"{peer} returned no gradient"


def test_peers_compute_the_same_binary_loss_and_gradient():
    """Every peer's multi-label binary loss (and gradient, where it has one) against the
    float64 reference on the one-hot labels they all build."""
    x, t = _inputs(32, 50)
    y = bench.peers.multilabel(x, t)
    assert y.dtype == x.dtype and (y.sum(axis=1) == 1).all()
    want_loss, want_grad = reference.binary_cross_entropy_with_logits_and_grad(
        x.astype(np.float64), y.astype(np.float64)
    )
    for op in ("bce_with_logits", "bce_with_logits_and_grad"):
        for peer in ["sce_rs", *INSTALLED]:
            b = bench.build(peer, op, x, t)
            if b is None:
                has_it = ("sce_rs", "torch", "jax", *(("numpy",) * (op == "bce_with_logits")))
                assert peer not in has_it, f"{peer} has no {op}"
                continue
            result = b()
            loss, *grad = result if isinstance(result, (tuple, list)) else (result,)
            assert abs(float(np.asarray(loss)) - want_loss) < 1e-5 * abs(want_loss), (peer, op)
            assert len(grad) == op.endswith("grad"), (peer, op)
            for g in grad:
                np.testing.assert_allclose(
                    np.asarray(g), want_grad, rtol=1e-4, atol=1e-9, err_msg=peer
                )


@pytest.mark.parametrize("per_call", [False, True])
def test_every_repeat_of_the_in_place_gradient_sees_the_same_logits(monkeypatch, per_call):
    x, t = _inputs()
    seen = []
    real = sce_rs.cross_entropy_and_grad

    def spy(logits, target, **kw):
        seen.append(np.array(logits, copy=True))
        return real(logits, target, **kw)

    monkeypatch.setattr(sce_rs, "cross_entropy_and_grad", spy)
    b = bench.build("sce_rs", "cross_entropy_and_grad", x, t)
    bench.time_it(b, repeat=3, per_call=per_call)
    assert len(seen) >= 4  # the warm-up and three repeats (more when looped per call)
    for logits in seen:
        np.testing.assert_array_equal(logits, x)
    # The last call's result is the gradient of x, not of an earlier gradient.
    loss, grad = b()
    want_loss, want_grad = reference.cross_entropy_and_grad(x.astype(np.float64), t)
    assert abs(float(loss) - want_loss) < 1e-5 * abs(want_loss)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)

    # The control: without the untimed restore, the second call would read the first gradient.
    seen.clear()
    b.reset()
    b.call()
    b.call()
    assert not np.array_equal(seen[1], x)


@pytest.mark.parametrize(
    "op", ["cross_entropy_and_grad", "smoothed_cross_entropy_and_grad", "softmax_inplace"]
)
def test_every_peer_restores_its_input_before_each_call(op):
    x, t = _inputs()
    for peer in ["sce_rs", *INSTALLED]:
        b = bench.build(peer, op, x, t)
        if b is None:
            continue
        assert b.reset is not None, f"{peer}'s {op} has no untimed restore"
        first = _as_arrays(b())
        again = _as_arrays(b())
        assert len(first) == len(again) > 0
        for a, c in zip(first, again):
            np.testing.assert_array_equal(a, c, err_msg=f"{peer} {op}")
    np.testing.assert_array_equal(x, _inputs()[0])  # nobody wrote over the shared logits


def _as_arrays(result):
    parts = result if isinstance(result, (tuple, list)) else (result,)
    return [np.array(p, copy=True) for p in parts]


def test_softmax_out_rows_all_write_into_a_buffer_and_allocating_peers_have_none():
    x, t = _inputs()
    for peer in ["sce_rs", *INSTALLED]:
        b = bench.build(peer, "softmax_out", x, t)
        if peer in ("numpy (reference)", "scipy", "jax"):
            assert b is None, f"{peer} allocates: it has no softmax_out row"
            continue
        assert b is not None and b.reset is None
        if peer in ("sce_rs", "numpy"):
            first, second = b(), b()
            assert first is second or np.shares_memory(first, second), peer
            np.testing.assert_allclose(first, reference.softmax(x), rtol=1e-5, atol=1e-8)


def test_the_table_names_the_peers_without_a_mode(capsys):
    bench.main(
        [
            "--shape",
            "16x300",
            "--ops",
            "softmax_out",
            "--repeat",
            "1",
            "--peers",
            "numpy (reference)",
        ]
    )
    text = capsys.readouterr().out
    assert "no softmax_out row (not offered in this mode): numpy (reference)" in text
    assert "numpy (reference)  " not in text.split("softmax_out:")[1].split("\n\n")[0]


def test_token_logprobs_is_reported_unavailable_before_it_exists(monkeypatch, capsys):
    monkeypatch.delattr(sce_rs, "token_logprobs", raising=False)
    bench.main(
        ["--shape", "16x300", "--ops", "token_logprobs", "--repeat", "1", "--peers", "numpy"]
    )
    text = capsys.readouterr().out
    assert "note: sce_rs: sce_rs" in text and "has no token_logprobs" in text
    assert 'sce_rs cross_entropy(reduction="none")' in text
    assert "no token_logprobs row (not offered in this mode): numpy" in text


def test_token_logprobs_calls_sce_rs_with_the_top_5(monkeypatch, capsys):
    calls = []

    def fake(logits, target, **kw):
        calls.append(kw)
        return sce_rs.cross_entropy(logits, target, reduction="none")

    monkeypatch.setattr(sce_rs, "token_logprobs", fake, raising=False)
    bench.main(
        ["--shape", "16x300", "--ops", "token_logprobs", "--repeat", "1", "--peers", "numpy"]
    )
    text = capsys.readouterr().out
    assert calls and all(kw == {"top_k": 5} for kw in calls)
    table = text.split("token_logprobs:")[1]
    assert "\n  sce_rs " in table and "sce_rs takes" in table
    # Its peak extra memory is always measured (the claim is that there is none).
    assert "MiB" in table


@pytest.mark.parametrize("peer", [p for p in ("torch", "jax") if p in INSTALLED])
def test_peer_scoring_sequences_compute_the_target_logprobs(peer):
    x, t = _inputs()
    b = bench.build(peer, "token_logprobs", x, t)
    target, greedy, values, ids, entropy = (np.asarray(r) for r in b.call())
    lp = reference.log_softmax(x.astype(np.float64))
    np.testing.assert_allclose(target, lp[np.arange(len(t)), t], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(greedy, lp.argmax(-1) == t)
    np.testing.assert_array_equal(ids, np.argsort(-lp, axis=-1, kind="stable")[:, :5])
    np.testing.assert_allclose(values, np.sort(lp, axis=-1)[:, ::-1][:, :5], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(entropy, -(np.exp(lp) * lp).sum(-1), rtol=1e-4)


def test_max_memory_bytes_is_passed_where_accepted(monkeypatch, capsys):
    assert cli.parse_bytes("64M") == 64 << 20
    assert cli.parse_bytes("1GiB") == 1 << 30
    assert cli.parse_bytes("4096") == 4096
    seen = []
    real = sce_rs.linear_cross_entropy

    def accepting(h, w, t, **kw):
        seen.append(kw)
        return real(h, w, t)

    def refusing(h, w, t, **kw):
        if kw:
            raise TypeError("linear_cross_entropy() got an unexpected keyword 'max_memory_bytes'")
        seen.append(kw)
        return real(h, w, t)

    argv = ["--linear", "8x4x50", "--ops", "linear_cross_entropy", "--repeat", "1"]
    argv += ["--peers", "numpy", "--max-memory-bytes", "1M"]
    monkeypatch.setattr(sce_rs, "linear_cross_entropy", accepting)
    bench.main(argv)
    assert {"max_memory_bytes": 1 << 20} in seen
    assert "takes no max_memory_bytes" not in capsys.readouterr().out

    seen.clear()
    monkeypatch.setattr(sce_rs, "linear_cross_entropy", refusing)
    bench.main(argv)
    assert seen and all(kw == {} for kw in seen)
    assert "takes no max_memory_bytes: its default ran" in capsys.readouterr().out


def test_every_registered_peer_is_one_class_with_its_name():
    assert list(peers.PEERS)[0] == "sce_rs"
    for name, peer in peers.PEERS.items():
        assert isinstance(peer, peers.Peer) and peer.name == name

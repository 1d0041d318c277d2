"""The benchmark tool runs end to end on a tiny case and reports what it measured."""

from __future__ import annotations

import json

import pytest

from sce_rs import bench


def test_bench_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    bench.main(
        [
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
    )
    text = capsys.readouterr().out
    assert "float32 16x300  cross_entropy" in text
    assert "faster" in text
    data = json.loads(out.read_text())
    peers = {(r["op"], r["peer"]) for r in data["results"]}
    assert ("cross_entropy", "sce_rs") in peers and ("softmax", "numpy") in peers
    assert all(r["median_s"] > 0 for r in data["results"])
    assert data["machine"]["simd_backend"]


def test_bench_rejects_unknown_ops_and_peers():
    with pytest.raises(SystemExit):
        bench.main(["--ops", "nope"])
    with pytest.raises(SystemExit):
        bench.main(["--peers", "fortran"])


def test_peer_callables_compute_the_same_loss():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 50)).astype(np.float32)
    t = rng.integers(0, 50, size=32)
    ours = float(bench.build("sce_rs", "cross_entropy", x, t, 1)())
    for peer in ("numpy", "numpy (reference)"):
        theirs = float(np.asarray(bench.build(peer, "cross_entropy", x, t, 1)()))
        assert abs(ours - theirs) < 1e-5 * abs(theirs)

"""Smoke test of ``neuroplastic bench simulate`` on a tiny network."""

from __future__ import annotations

import builtins
import io
import json

from neuroplastic.bench import nir_peers, timing
from neuroplastic.bench import simulate as bench


def test_bench_simulate_rows(tmp_path, capsys):
    out = tmp_path / "sim.json"
    argv = ["--quick", "--json", str(out), "--sizes", "784,48,48,10", "--steps", "20", "--samples", "8",
            "--repeats", "1", "--peers", "norse,rockpool"]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())
    assert [r["tool"] for r in rows] == [bench.OURS, bench.OURS_H5, bench.OURS_LAYERS, "norse", "rockpool"]
    for r in rows:
        assert {"tool", "samples_per_s", "agreement", "status", "T", "samples", "density", "input_rate",
                "hidden_rate"} <= set(r)
        assert r["T"] == 20 and r["samples"] == 8 and r["density"] == bench.DENSITY
        assert isinstance(r["cpu"], str) and r["cpu"]
        assert r["steal"] is None or 0.0 <= r["steal"] <= 1.0
    ours, h5, layered = rows[0], rows[1], rows[2]
    for r in (ours, h5, layered):
        assert r["status"] == "ok" and r["samples_per_s"] > 0 and r["ms_per_batch"] > 0
        assert "speedup_vs_fastest_peer" in r
    assert h5["agreement"] == 1.0  # the h5 file holds exactly what run_batches returned
    assert layered["agreement"] > 0.99  # the other path: same spikes but for threshold ties
    assert ours["fused"] and h5["fused"] and not layered["fused"]
    assert set(ours["routes"]) == {"fc1", "fc2", "fc3"}
    for r in rows[3:]:
        if r["status"] == "ok":
            assert r["samples_per_s"] > 0 and 0.9 <= r["agreement"] <= 1.0
        else:  # not installed, or the peer refuses the graph (Rockpool: nir.LIF)
            assert r["samples_per_s"] is None and r["agreement"] is None
    if nir_peers.available("norse"):
        assert rows[3]["status"] == "ok" and ours["speedup_vs_fastest_peer"] > 0
    assert "samples/s" in capsys.readouterr().out


def test_steal_fraction_from_proc_stat(monkeypatch):
    """``/proc/stat``'s first line: user nice system idle iowait irq softirq steal guest ..."""
    lines = iter(["cpu  100 0 50 800 10 0 0 40 7 0\n", "cpu  150 0 60 950 10 0 0 70 9 0\n"])
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: io.StringIO(next(lines)) if f == "/proc/stat"
                        else real_open(f, *a, **k))
    a, b = timing.cpu_ticks(), timing.cpu_ticks()
    assert a == (40, 1000) and b == (70, 1240)  # guest time is already in user
    assert timing.steal_fraction(a, b) == 30 / 240
    assert timing.steal_fraction(None, b) is None and timing.steal_fraction(b, a) is None

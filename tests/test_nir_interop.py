"""NIR graphs between us and Norse, snnTorch, SpikingJelly and Rockpool, both directions.

Spike agreement of the outputs (``neuroplastic.bench.nir_agreement``): >= 99.9 % wherever
a peer has the primitive and its NIR code works; where a peer is known to be broken the
test asserts the defect, so that it fails (and the adapter in ``neuroplastic.bench.nir_peers``
gets revisited) when the peer fixes it. Every comparison also checks that our network
spikes in its hidden and output layers, so that agreement is not the agreement of silence.
"""

import copy
import math

import nir
import numpy as np
import pytest
import torch

from neuroplastic.bench import nir_agreement as A
from neuroplastic.bench import nir_peers as P
from neuroplastic.export import to_nir

pytestmark = pytest.mark.interop

SEEDS = (0, 1)
DT = 1e-3
_MODULES = {"norse": "norse.torch", "snntorch": "snntorch", "spikingjelly": "spikingjelly.activation_based",
            "rockpool": "rockpool.nn.modules.torch.nir"}

#: (peer, neuron) pairs that must agree spike for spike, and the export variant used peer->ours
OURS_TO_PEER = [("norse", "lif"), ("norse", "cubalif"), ("norse", "if"), ("snntorch", "lif"),
                ("snntorch", "cubalif"), ("spikingjelly", "lif"), ("spikingjelly", "cubalif"),
                ("spikingjelly", "if")]
#: Norse's exporter writes wrong parameters (tau x dt, w_in = 1, IF r = 1): checked repaired,
#: the raw defects are asserted in test_norse_raw_export_still_wrong
PEER_TO_OURS = [(peer, neuron, peer == "norse") for peer, neuron in OURS_TO_PEER]


def _require(peer: str) -> None:
    pytest.importorskip(_MODULES[peer])
    if not P.available(peer):
        pytest.skip(f"{peer}'s NIR code does not import here")


def _spiking(m: A.Measurement) -> None:
    assert m.hidden_rate > 0.01, "our hidden layer is (nearly) silent: the comparison would be vacuous"
    assert m.output_rate > 0.01, "our output layer is (nearly) silent: the comparison would be vacuous"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("peer,neuron", OURS_TO_PEER)
def test_ours_to_peer(peer, neuron, seed):
    _require(peer)
    m = A.ours_to_peer(peer, neuron, seed, dt=DT, fold_r=(peer, neuron) == ("norse", "lif"))
    _spiking(m)
    assert m.agreement >= 0.999, f"{peer} {neuron}: {m.agreement:.4f}"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("peer,neuron,repair", PEER_TO_OURS)
def test_peer_to_ours(peer, neuron, repair, seed):
    _require(peer)
    m = A.peer_to_ours(peer, neuron, seed, dt=DT, repair=repair)
    _spiking(m)
    assert m.agreement is not None, m.note
    assert m.agreement >= 0.999, f"ours vs {peer}'s importer: {m.agreement:.4f}"
    assert m.native >= 0.999, f"ours vs {peer}'s native network: {m.native:.4f}"


def test_spikingjelly_cnn():
    _require("spikingjelly")
    for seed in SEEDS:
        m = A.ours_to_peer("spikingjelly", "lif", seed, dt=DT, model=A.our_cnn(DT, seed))
        _spiking(m)
        assert m.agreement >= 0.999


@pytest.mark.parametrize("peer", ["norse", "snntorch"])
def test_conv_graph_still_fails(peer):
    """Norse and snnTorch keep Flatten(start_dim=0) unshifted (it flattens the batch too);
    Norse also drops AvgPool2d. If this starts passing, add them to test_spikingjelly_cnn."""
    _require(peer)
    with pytest.raises(Exception):  # noqa: B017 - a crash or our output-shape check, both are the defect
        A.ours_to_peer(peer, "lif", 0, dt=DT, fold_r=peer == "norse", model=A.our_cnn(DT, 0))


# --------------------------------------------------------------------------- known defects


def test_norse_lif_ignores_r():
    """Norse 1.1 imports a LIF as R = 1 whatever r says: our unfolded graph (r = tau/dt) is
    under-driven, which is why the Norse rows use fold_r=True."""
    _require("norse")
    m = A.ours_to_peer("norse", "lif", 0, dt=DT, fold_r=False)
    _spiking(m)
    assert m.agreement < 0.99
    assert m.extra["peer_output_rate"] < 0.01


def test_norse_raw_export_still_wrong():
    """Norse 1.1's exporter: tau = dt / tau_inv, CubaLIF w_in = 1, IF r = 1 (the reasons for
    repair=True in test_peer_to_ours)."""
    _require("norse")
    p = P.NativeParams()
    graphs = {n: P.export_native("norse", A._native("norse", n, (100, 64, 10), DT, 0), 100, DT)
              for n in ("lif", "cubalif", "if")}
    lif = next(v for v in graphs["lif"].nodes.values() if isinstance(v, nir.LIF))
    np.testing.assert_allclose(np.asarray(lif.tau, np.float64), p.tau_mem * DT, rtol=1e-5)
    cuba = next(v for v in graphs["cubalif"].nodes.values() if isinstance(v, nir.CubaLIF))
    np.testing.assert_allclose(np.asarray(cuba.tau_syn, np.float64), p.tau_syn * DT, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(cuba.w_in), 1)
    iaf = next(v for v in graphs["if"].nodes.values() if isinstance(v, nir.IF))
    np.testing.assert_array_equal(np.asarray(iaf.r), 1)


def test_snntorch_if_unusable():
    """snnTorch 1.0 imports IF as a leaky, subtract-reset Leaky(init_hidden=False) whose
    (spk, mem) tuple breaks the graph, and asserts r == 1; its exporter has no IF. The
    adapter refuses IF; this calls snnTorch itself, so it fails once snnTorch fixes it."""
    _require("snntorch")
    import snntorch
    from snntorch.export_nir import export_to_nir
    from snntorch.import_nir import import_from_nir

    model = A.our_mlp("if", seed=0, dt=DT)
    x = A.spike_input((50, 16, 100), 0)
    ours = model(x)
    graph = to_nir(model)
    for r in (None, 1.0):  # our graph (R = 1/dt), and one with the r == 1 snnTorch demands
        g = copy.deepcopy(graph)
        if r is not None:
            for node in g.nodes.values():
                if isinstance(node, nir.IF):
                    node.r = np.full_like(node.r, r)
        try:
            with P._quiet():
                net = import_from_nir(g)
                state, outs = None, []
                for x_t in x:
                    out, state = net(x_t, state)
                    outs.append(out)
            theirs = torch.stack(outs)
        except (AssertionError, TypeError, RuntimeError):
            continue
        assert theirs.shape != ours.shape or not torch.equal(theirs, ours), "snnTorch now imports IF: update nir_peers"
    with pytest.raises(P.PeerUnsupported):
        P.load("snntorch", graph, DT)
    # export: Leaky(beta=1) is snnTorch's only IF-like neuron; it becomes a LIF with tau = r = inf
    n = 8
    net = torch.nn.Sequential(torch.nn.Linear(4, n), snntorch.Leaky(beta=torch.ones(n), threshold=torch.ones(n),
                                                                    init_hidden=True, reset_mechanism="zero"))
    with P._quiet():
        exported = export_to_nir(net, torch.zeros(1, 4), ignore_dims=[0])
    kinds = {type(v) for v in exported.nodes.values()}
    assert nir.IF not in kinds and nir.LIF in kinds
    lif = next(v for v in exported.nodes.values() if isinstance(v, nir.LIF))
    assert not np.all(np.isfinite(np.asarray(lif.tau, np.float64)))
    with pytest.raises(P.PeerUnsupported):
        P.export_native_mlp("snntorch", (100, 64, 10), "if", DT, 0)


def test_rockpool_cubalif_runs(record_property):
    """Rockpool imports CubaLIF (exact decay, w_in and r ignored, multi-spike subtractive
    firing): it must load and run; the agreement is recorded, not asserted high."""
    _require("rockpool")
    m = A.ours_to_peer("rockpool", "cubalif", 0, dt=DT)
    _spiking(m)
    assert 0.0 <= m.agreement <= 1.0
    assert m.extra["peer_output_rate"] > 0
    record_property("rockpool_cubalif_ours_to_peer_agreement", m.agreement)
    back = A.peer_to_ours("rockpool", "cubalif", 0, dt=DT, repair=True)
    _spiking(back)
    assert back.agreement is not None and 0.0 <= back.native <= 1.0
    record_property("rockpool_cubalif_peer_to_ours_native_agreement", back.native)
    assert not math.isnan(back.agreement)


def test_rockpool_lif_and_if_import_fail():
    """Rockpool 3.1's from_nir reads node.tau_mem on a nir.LIF (AttributeError) and has no IF
    mapping; its exporter's graphs fail nir.write (batch/time dims in the I/O types)."""
    _require("rockpool")
    from rockpool.nn.modules.torch.nir import from_nir as rockpool_from_nir

    with P._quiet(), pytest.raises(AttributeError):
        rockpool_from_nir(to_nir(A.our_mlp("lif", seed=0, dt=DT)))
    with P._quiet(), pytest.raises(NotImplementedError):
        rockpool_from_nir(to_nir(A.our_mlp("if", seed=0, dt=DT)))
    with pytest.raises(P.PeerUnsupported):
        P.load("rockpool", to_nir(A.our_mlp("lif", seed=0, dt=DT)), DT)
    with pytest.raises(ValueError, match="Type inference"):
        A.peer_to_ours("rockpool", "cubalif", 0, dt=DT, repair=False)

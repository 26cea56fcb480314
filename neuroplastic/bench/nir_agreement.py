r"""How well NIR graphs travel between us and the peer simulators: spike agreement.

For each available peer (Norse, snnTorch, SpikingJelly, Rockpool), neuron (LIF, CubaLIF,
IF) and direction, the fraction of equal output entries ``[T, B, N_out]`` on Bernoulli(0.2)
input, per seed (the table gives the mean and the minimum over seeds):

* ``ours->peer``: our MLP ``sizes`` (forward Euler at ``dt``, zero reset, ``r = tau/dt``
  i.e. unit input gain; CubaLIF ``w_in = tau_syn/dt``; IF ``R = 1/dt``), weights from the
  seed scaled layer by layer so that each layer fires at ~10 % (5-15 %), exported with
  :func:`~neuroplastic.export.to_nir` and run by the peer's own importer
  (:mod:`neuroplastic.bench.nir_peers`) against our own forward pass. Norse 1.1 ignores a
  LIF's ``r``: its LIF row uses ``fold_r=True``, and a second row without it shows the defect.
  A small CNN (conv -> LIF -> avg-pool -> flatten -> linear -> LIF) is exported the same way.
* ``peer->ours``: the peer's *native* network (:func:`~neuroplastic.bench.nir_peers.native_mlp`)
  exported by the peer's own exporter, written and read back with ``nir.write``/``nir.read``,
  built by :func:`~neuroplastic.export.from_nir` and compared (1) with what the peer's
  importer computes from the same graph and (2) with the native network itself (column
  "vs native": exporter defects show here). The raw export is measured when ``nir.write``
  accepts it; where the raw graph is broken (unwritable, or ours disagrees with the native
  network) a ``repair=True`` row follows. Rockpool's graphs are read with exact integration
  (Rockpool integrates exactly and its repaired export describes that), all others with Euler.

A peer that refuses a graph (:class:`~neuroplastic.bench.nir_peers.PeerUnsupported`) or
crashes gives a row with agreement ``None`` and the one-line reason in ``note``. Rows below
99.9 % carry the known reason (see :func:`~neuroplastic.bench.nir_peers.peer_semantics`).

    python benchmarks/nir_agreement.py [--seeds 0 1 2 3 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from importlib import metadata
from pathlib import Path

import nir
import torch

from ..export import agreement, from_nir, to_nir
from ..io import write_json
from ..network import SNN, cnn, mlp
from ..neurons import Neuron
from ..synapses import Conv2d, Linear
from . import nir_peers as P

__all__ = ["agreement_rows", "main", "our_mlp", "our_cnn", "ours_to_peer", "peer_to_ours", "Measurement",
           "spike_input", "markdown"]

TAU_MEM, TAU_SYN = 2e-2, 5e-3
INPUT_P = 0.2
#: the threshold of the table's verdict (and of the tests)
GOOD = 0.999
#: the CNN rows: one input sample's shape and the network
CNN_SHAPE, CNN_CHANNELS, CNN_OUT = (1, 12, 12), (4,), 5

_DIST = {"norse": "norse", "snntorch": "snntorch", "spikingjelly": "spikingjelly", "rockpool": "rockpool"}


@dataclass
class Measurement:
    """One seed: agreement with the peer (and with the peer's native network), our firing rates."""

    agreement: float | None
    native: float | None = None
    hidden_rate: float = math.nan
    output_rate: float = math.nan
    note: str = ""
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs and our models


def spike_input(shape: Sequence[int], seed: int, p: float = INPUT_P) -> torch.Tensor:
    """Bernoulli(``p``) spikes of ``shape`` (float32) from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    return (torch.rand(*shape, generator=gen) < p).float()


def _neuron_kw(neuron: str, dt: float) -> dict:
    kw = {"integration": "euler", "reset": "zero", "dt": dt, "v_leak": 0.0, "v_reset": 0.0}
    if neuron != "if":
        kw["tau_mem"] = TAU_MEM
    if neuron == "cubalif":
        kw.update(tau_syn=TAU_SYN, w_in=TAU_SYN / dt)  # unit synaptic gain (SpikingJelly, snnTorch need it)
    return kw


def _rates(model: SNN, x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """``model(x)`` and the mean firing rates of its hidden spiking layers and of its output."""
    with torch.no_grad(), model.recording():
        out = model(x)
        spiking = [rec["spikes"] for rec in model.recordings.values() if "spikes" in rec]
    hidden = spiking[:-1]
    hid = float(sum(s.sum() for s in hidden) / max(1, sum(s.numel() for s in hidden))) if hidden else math.nan
    return out, hid, float(out.float().mean())


def _calibrate(model: SNN, x: torch.Tensor, seed: int) -> None:
    """Seeded weights ``N(0, 1/fan_in)`` (biases ``N(0, 0.25/fan_in)``), each synapse's gain
    fitted so that the spiking layer after it fires at ~10 % (5-15 %) on ``x``."""
    gen = torch.Generator().manual_seed(int(seed))
    layers = list(model.layers.values())
    pairs = []
    for i, layer in enumerate(layers):
        if isinstance(layer, (Linear, Conv2d)):
            nxt = next(j for j in range(i + 1, len(layers)) if isinstance(layers[j], Neuron) and layers[j].spiking)
            pairs.append((layer, layers[nxt]))
    with torch.no_grad():
        for syn, _ in pairs:  # silence everything downstream until it is fitted
            syn.weight.zero_()
            if syn.bias is not None:
                syn.bias.zero_()
    for syn, neuron in pairs:
        fan_in = syn.weight[0].numel()
        w0 = torch.randn(syn.weight.shape, generator=gen) / math.sqrt(fan_in)
        b0 = torch.randn(syn.weight.shape[0], generator=gen) * 0.5 / math.sqrt(fan_in)

        def rate(gain: float, syn=syn, neuron=neuron, w0=w0, b0=b0) -> float:
            with torch.no_grad():
                syn.weight.copy_(gain * w0)
                if syn.bias is not None:
                    syn.bias.copy_(gain * b0)
                model.record(True)
                try:
                    model(x)
                    return float(model.recordings[_name_of(model, neuron)]["spikes"].mean())
                finally:
                    model.record(False)

        rate(P.fit_gain(rate))


def _name_of(model: SNN, module: torch.nn.Module) -> str:
    return next(n for n, m in model.layers.items() if m is module)


@cache
def _calibrated_state(kind: str, neuron: str, sizes: tuple[int, ...], dt: float, seed: int) -> dict:
    model = _build(kind, neuron, sizes, dt)
    x_shape = (P.CAL_T, P.CAL_B, *(sizes if kind == "cnn" else sizes[:1]))
    _calibrate(model, spike_input(x_shape, seed + 1000), seed)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _build(kind: str, neuron: str, sizes: tuple[int, ...], dt: float) -> SNN:
    kw = _neuron_kw(neuron, dt)
    if kind == "cnn":
        return cnn(sizes, channels=CNN_CHANNELS, n_out=CNN_OUT, neuron=neuron, readout="spikes", **kw)
    return mlp(list(sizes), neuron=neuron, readout="spikes", **kw)


def our_mlp(neuron: str, sizes: Sequence[int] = (100, 64, 10), dt: float = 1e-3, seed: int = 0) -> SNN:
    """``neuroplastic.mlp(sizes, neuron, readout="spikes", integration="euler", reset="zero",
    tau_mem=20 ms, v_leak = v_reset = 0)`` (CubaLIF: ``tau_syn = 5 ms, w_in = tau_syn/dt``),
    weights from ``seed`` calibrated to fire at ~10 % per layer on Bernoulli(0.2) input."""
    sizes = tuple(int(s) for s in sizes)
    model = _build("mlp", neuron, sizes, float(dt))
    model.load_state_dict(_calibrated_state("mlp", neuron, sizes, float(dt), int(seed)))
    return model.eval()


def our_cnn(dt: float = 1e-3, seed: int = 0) -> SNN:
    """``neuroplastic.cnn((1, 12, 12), channels=(4,), n_out=5, neuron="lif", readout="spikes")``
    (Euler, zero reset, tau_mem = 20 ms), weights calibrated like :func:`our_mlp`."""
    model = _build("cnn", "lif", CNN_SHAPE, float(dt))
    model.load_state_dict(_calibrated_state("cnn", "lif", CNN_SHAPE, float(dt), int(seed)))
    return model.eval()


# --------------------------------------------------------------------------- one measurement


def ours_to_peer(peer: str, neuron: str, seed: int, *, T: int = 50, B: int = 16,
                 sizes: Sequence[int] = (100, 64, 10), dt: float = 1e-3, fold_r: bool = False,
                 model: SNN | None = None) -> Measurement:
    """Our network exported with ``to_nir(model, fold_r=fold_r)``, run by ``peer``'s importer,
    against our own forward pass (``model`` defaults to :func:`our_mlp`). Raises what the
    peer raises (:class:`~neuroplastic.bench.nir_peers.PeerUnsupported` for known gaps)."""
    model = model if model is not None else our_mlp(neuron, sizes, dt, seed)
    x = spike_input((T, B, *model.in_shape), seed)
    ours, hid, out = _rates(model, x)
    graph = to_nir(model, fold_r=fold_r)
    theirs = P.run(peer, P.load(peer, graph, dt), x)
    if theirs.shape != ours.shape:
        raise RuntimeError(f"{peer} output has shape {list(theirs.shape)}, ours {list(ours.shape)}")
    return Measurement(agreement(ours, theirs), hidden_rate=hid, output_rate=out,
                       extra={"peer_output_rate": float((theirs > 0).float().mean())})


def _roundtrip(graph: nir.NIRGraph) -> nir.NIRGraph:
    """``graph`` written with ``nir.write`` and read back (raises what nir raises)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "g.nir")
        nir.write(path, graph)
        return nir.read(path)


@cache
def _native(peer: str, neuron: str, sizes: tuple[int, ...], dt: float, seed: int):
    """The peer's calibrated native network (built once: calibration is the slow part)."""
    return P.native_mlp(peer, sizes, neuron, dt, seed)


def _integration(peer: str) -> str:
    return "exact" if peer == "rockpool" else "euler"


def peer_to_ours(peer: str, neuron: str, seed: int, *, T: int = 50, B: int = 16,
                 sizes: Sequence[int] = (100, 64, 10), dt: float = 1e-3, repair: bool = False) -> Measurement:
    """The peer's native network exported by the peer (``repair`` as in
    :func:`~neuroplastic.bench.nir_peers.export_native`), through ``nir.write``/``nir.read``,
    built by our ``from_nir(graph, dt, integration)``. ``agreement``: ours vs the peer's
    importer on the same graph (``None`` with the reason in ``note`` if the importer refuses
    it); ``native``: ours vs the native network. Raises if the export or ``nir.write`` fails."""
    native = _native(peer, neuron, tuple(int(s) for s in sizes), float(dt), int(seed))
    graph = _roundtrip(P.export_native(peer, native, sizes[0], dt, repair=repair))
    x = spike_input((T, B, sizes[0]), seed)
    ours_model = from_nir(graph, dt=dt, integration=_integration(peer))
    ours, hid, out = _rates(ours_model, x)
    m = Measurement(None, agreement(ours, P.run_native(peer, native, x)), hid, out)
    try:
        m.agreement = agreement(ours, P.run(peer, P.load(peer, graph, dt), x))
    except Exception as err:  # noqa: BLE001 - the peer's importer refusing its own graph is a result
        m.note = f"{peer} import: {_one_line(err)}"
    return m


# --------------------------------------------------------------------------- the table

#: why a row is below :data:`GOOD` (peer, primitive, direction, variant) -> reason (from the peer notes)
_WHY = {
    ("norse", "lif", "ours->peer", "nofold"): "Norse's LIF import ignores r (R=1): graph with r=tau/dt under-driven "
                                              "by 1/r (fold_r=True moves R into the weights)",
    ("norse", "lif", "peer->ours", "raw"): "Norse exporter writes tau = dt/tau_inv (wrong by a factor dt)",
    ("norse", "cubalif", "peer->ours", "raw"): "Norse exporter: taus wrong by a factor dt, w_in = 1 (should be "
                                               "tau_syn/dt); the graph's Euler step is unstable (dt/tau = 50, "
                                               "200): membranes overflow to inf/nan, where we and Norse differ",
    ("norse", "if", "peer->ours", "raw"): "Norse exporter writes IF r = 1 (its IAFCell adds the input: should be "
                                          "1/dt), so we add dt*I per step and stay silent",
    ("rockpool", "cubalif", "ours->peer", ""): "Rockpool: exact decay, ignores w_in and r, non-strict multi-spike "
                                               "threshold (counts) with subtractive reset",
    ("rockpool", "cubalif", "peer->ours", "repair"): "Rockpool fires floor(v/v_th) spikes at v >= v_th and "
                                                     "subtracts; NIR (and we) fire once at v > v_th and reset",
    ("rockpool", "lif", "peer->ours", "repair"): "Rockpool fires floor(v/v_th) spikes at v >= v_th and "
                                                 "subtracts; NIR (and we) fire once at v > v_th and reset",
    ("spikingjelly", "*", "*", "*"): "SpikingJelly's threshold is non-strict (v >= v_th)",
}


#: known causes of failures (peer, primitive, direction, variant) -> reason, before the error message
_FAIL = {
    ("norse", "lif/cnn", "ours->peer", ""): "Norse 1.1 maps no AvgPool2d (the node is dropped and the graph falls "
                                            "apart: crash or the conv layer's output, depending on hash order) and "
                                            "does not shift Flatten past the batch",
    ("snntorch", "lif/cnn", "ours->peer", ""): "snnTorch does not shift Flatten(start_dim=0) past the batch dim",
    ("rockpool", "lif", "peer->ours", "raw"): "Rockpool's exporter writes the sample's batch/time dims into the "
                                              "I/O types",
    ("rockpool", "cubalif", "peer->ours", "raw"): "Rockpool's exporter writes the sample's batch/time dims into "
                                                  "the I/O types",
}


def _why(peer: str, neuron: str, direction: str, variant: str) -> str:
    for key in ((peer, neuron, direction, variant), (peer, "*", "*", "*")):
        if key in _WHY:
            return _WHY[key]
    return ""


def _one_line(err: BaseException, limit: int = 200) -> str:
    msg = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {msg[0] if msg else ''}".rstrip(": ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _version(peer: str) -> str:
    try:
        return metadata.version(_DIST[peer])
    except metadata.PackageNotFoundError:
        return "?"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _row(peer: str, primitive: str, direction: str, settings: str, seeds: Sequence[int],
         measure: Callable[[int], Measurement], variant: str = "") -> dict:
    """Measure every seed; the row (agreement ``None`` and the reason if any seed fails)."""
    row = {"tool": peer, "tool_version": _version(peer), "primitive": primitive, "direction": direction,
           "settings": settings, "agreement_mean": None, "agreement_min": None, "seeds": list(seeds),
           "note": ""}
    if direction == "peer->ours":
        row.update(native_mean=None, native_min=None)
    ms: list[Measurement] = []
    try:
        for seed in seeds:
            ms.append(measure(seed))
    except Exception as err:  # noqa: BLE001 - a peer's refusal or crash is a row, not an abort
        known = _FAIL.get((peer, primitive, direction, variant))
        row["note"] = f"{known}: {_one_line(err)}" if known else _one_line(err)
        return row
    agree = [m.agreement for m in ms if m.agreement is not None]
    if len(agree) == len(ms):
        row["agreement_mean"], row["agreement_min"] = _mean(agree), min(agree)
    if direction == "peer->ours":
        native = [m.native for m in ms]
        row["native_mean"], row["native_min"] = _mean(native), min(native)
    row["ours_hidden_rate"] = _mean([m.hidden_rate for m in ms])
    row["ours_output_rate"] = _mean([m.output_rate for m in ms])
    notes = sorted({m.note for m in ms if m.note})
    low = [v for v in (row["agreement_min"], row.get("native_min")) if v is not None and v < GOOD]
    if low:
        notes.insert(0, _why(peer, primitive.split("/")[0], direction, variant))
    row["note"] = "; ".join(n for n in notes if n)
    return row


def agreement_rows(seeds: Sequence[int] = (0, 1, 2, 3, 4), T: int = 50, B: int = 16,
                   sizes: Sequence[int] = (100, 64, 10), dt: float = 1e-3) -> list[dict]:
    """The agreement table (see the module docstring), one dict per row."""
    sizes, seeds = tuple(int(s) for s in sizes), [int(s) for s in seeds]
    kw = {"T": T, "B": B, "sizes": sizes, "dt": float(dt)}
    rows: list[dict] = []
    for peer in P.PEERS:
        if P.available(peer):
            rows += _peer_rows(peer, seeds, kw)
    return rows


def _peer_rows(peer: str, seeds: list[int], kw: dict) -> list[dict]:
    """All rows of one peer: per neuron ours->peer and peer->ours, then the CNN."""
    ms = f"dt={kw['dt'] * 1e3:g}ms"
    compensate = {"snntorch": "; taus x1e-4/dt (compensate_dt)", "rockpool": "; module dt set (compensate_dt)"}
    rows: list[dict] = []
    for neuron in P.NEURONS:
        gains = {"lif": "r=tau/dt", "cubalif": "r=tau_mem/dt, w_in=tau_syn/dt", "if": "R=1/dt"}[neuron]
        base = f"ours euler {ms}, zero reset, {gains}{compensate.get(peer, '')}"
        folds = [True, False] if (peer, neuron) == ("norse", "lif") else [False]
        for fold in folds:
            measure = partial(_ours_to_peer_seed, peer, neuron, fold_r=fold, **kw)
            variant = "nofold" if len(folds) > 1 and not fold else ""
            rows.append(_row(peer, neuron, "ours->peer", base + ("; fold_r" if fold else ""), seeds, measure,
                             variant))
        rows += _peer_to_ours_rows(peer, neuron, seeds, kw)
    fold = peer == "norse"
    settings = (f"cnn 1x12x12 conv3x3(4)-lif-avgpool2-flatten-fc(5)-lif, euler {ms}, r=tau/dt"
                f"{'; fold_r' if fold else ''}{compensate.get(peer, '')}")
    rows.append(_row(peer, "lif/cnn", "ours->peer", settings, seeds,
                     partial(_ours_to_peer_seed, peer, "lif", conv=True, fold_r=fold, **kw)))
    return rows


def _ours_to_peer_seed(peer: str, neuron: str, seed: int, *, conv: bool = False, **kw) -> Measurement:
    model = our_cnn(kw["dt"], seed) if conv else None
    return ours_to_peer(peer, neuron, seed, model=model, **kw)


def _peer_to_ours_rows(peer: str, neuron: str, seeds: list[int], kw: dict) -> list[dict]:
    """The raw-export row, and a ``repair=True`` row when the raw graph is broken."""
    integ = f"ours {_integration(peer)} {kw['dt'] * 1e3:g}ms"
    extra = "; taus x dt/1e-4 (compensate_dt)" if peer == "snntorch" else ""
    raw = _row(peer, neuron, "peer->ours", f"raw export, nir.write/read; {integ}{extra}", seeds,
               partial(peer_to_ours, peer, neuron, repair=False, **kw), variant="raw")
    rows = [raw]
    native_min = raw.get("native_min")
    unsupported = raw["note"].startswith("PeerUnsupported") and raw.get("native_mean") is None
    if not unsupported and (native_min is None or native_min < GOOD):
        rows.append(_row(peer, neuron, "peer->ours", f"repair=True, nir.write/read; {integ}{extra}", seeds,
                         partial(peer_to_ours, peer, neuron, repair=True, **kw), variant="repair"))
    return rows


def _pct(mean: float | None, low: float | None) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f} % (min {100 * low:.2f})"


def markdown(rows: Sequence[dict]) -> str:
    """The rows as a markdown table."""
    head = ("| tool | primitive | direction | agreement (mean, min over seeds) | vs native | our rates hid/out "
            "| settings | note |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        native = _pct(r.get("native_mean"), r.get("native_min")) if r["direction"] == "peer->ours" else ""
        rates = ""
        if r.get("ours_hidden_rate") is not None:
            rates = f"{100 * r['ours_hidden_rate']:.1f} / {100 * r['ours_output_rate']:.1f} %"
        cells = [f"{r['tool']} {r['tool_version']}", r["primitive"], r["direction"],
                 _pct(r["agreement_mean"], r["agreement_min"]), native, rates, r["settings"],
                 r["note"].replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nir_agreement", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--T", type=int, default=50)
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 64, 10])
    p.add_argument("--dt", type=float, default=1e-3)
    p.add_argument("--json", help="also write the rows as JSON")
    a = p.parse_args(argv)
    rows = agreement_rows(a.seeds, a.T, a.B, a.sizes, a.dt)
    print(f"NIR spike agreement, MLP {'-'.join(map(str, a.sizes))}, T={a.T}, B={a.B}, Bernoulli({INPUT_P}) "
          f"input, dt={a.dt:g} s, seeds {' '.join(map(str, a.seeds))}; nir {nir.__version__}, torch "
          f"{torch.__version__}")
    print()
    print(markdown(rows))
    if a.json:
        write_json(a.json, rows)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

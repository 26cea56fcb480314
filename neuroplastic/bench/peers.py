r"""``neuroplastic bench peers``: one BPTT training step against snnTorch and Norse.

The step of DESIGN.md: MLP 784-800-10 of LIF neurons (both layers spiking), T=25, B=128,
Bernoulli input at rate 0.1, loss = cross-entropy of the output spike counts,
forward + backward + SGD step. Each peer runs its idiomatic loop (snnTorch: per-step
``Linear`` + ``Leaky``; Norse: ``Linear`` over ``[T, B, N]`` + a ``LIFBoxCell`` loop);
ours runs one batched matmul per layer and one fused multi-step LIF node per layer.

Same weights and inputs in one process, and **the outputs are checked equal first**
(spike for spike, in float64 so that the order of float32 roundings inside batched vs
per-step matmuls cannot flip a threshold crossing; the timing runs in float32):

* vs snnTorch ``Leaky(beta=0.9, reset_mechanism="zero", reset_delay=False)``: our LIF
  with ``a = 0.9`` (exact decay), unit input gain, zero reset carrying gradient
  (snnTorch's immediate *subtract* reset skips the subtraction while the membrane stays
  above threshold, a different model);
* vs Norse ``LIFBoxCell`` (forward Euler, ``dt/tau = 0.1``, reset to zero): our LIF with
  ``integration="euler"``, ``reset="zero"``, ``r = 1``.

``speedup = min(snntorch_ms, norse_ms) / ours_ms`` where ``ours_ms`` is the slower of our
two configurations.
"""

from __future__ import annotations

import argparse
import math
import platform
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserError
from ..io import write_json
from ..network import mlp
from .timing import interleaved_ms

SIZES = (784, 800, 10)
T, B, RATE, BETA = 25, 128, 0.1, 0.9


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(T, B, SIZES[0], generator=g) < RATE).float()
    y = torch.randint(0, SIZES[-1], (B,), generator=g)
    return x, y


def _weights(scales: Sequence[float], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """PyTorch's default Linear init times a per-layer scale (chosen so that both layers
    fire at realistic rates: hidden ~6-9%, output ~7-17%)."""
    torch.manual_seed(seed)
    layers = [nn.Linear(a, b) for a, b in zip(SIZES[:-1], SIZES[1:])]
    return [(lay.weight.detach() * s, lay.bias.detach() * s) for lay, s in zip(layers, scales)]


def _ours(config: str, weights):
    tau = -1e-3 / math.log(BETA)
    if config == "snntorch":
        net = mlp(SIZES, readout="spikes", tau_mem=tau, dt=1e-3, integration="exact",
                  reset="zero", detach_reset=False, surrogate="atan")
    else:
        net = mlp(SIZES, readout="spikes", tau_mem=1e-2, dt=1e-3, integration="euler",
                  reset="zero", detach_reset=False, surrogate="fast_sigmoid:1", unit_gain=False)
    with torch.no_grad():
        for (_, syn), (w, b) in zip(net.synapses(), weights):
            syn.weight.copy_(w)
            syn.bias.copy_(b)
    return net, lambda x: net(x)


def _linears(weights) -> nn.ModuleList:
    """The peers' ``nn.Linear`` layers holding ``weights``."""
    fcs = nn.ModuleList([nn.Linear(a, b) for a, b in zip(SIZES[:-1], SIZES[1:])])
    with torch.no_grad():
        for fc, (w, b) in zip(fcs, weights):
            fc.weight.copy_(w)
            fc.bias.copy_(b)
    return fcs


def _snntorch(weights):
    import snntorch as snn

    fcs = _linears(weights)
    lifs = nn.ModuleList([snn.Leaky(beta=BETA, reset_mechanism="zero", reset_delay=False,
                                    spike_grad=snn.surrogate.atan(alpha=2.0)) for _ in fcs])
    model = nn.ModuleDict({"fcs": fcs, "lifs": lifs})

    def forward(x):
        mems = [lif.init_leaky() for lif in lifs]
        out = []
        for t in range(x.shape[0]):
            h = x[t]
            for i, (fc, lif) in enumerate(zip(fcs, lifs)):
                h, mems[i] = lif(fc(h.to(fc.weight.dtype)), mems[i])  # snnTorch spikes are float32
            out.append(h)
        return torch.stack(out)

    return model, forward


def _norse(weights):
    import norse.torch as norse

    fcs = _linears(weights)
    cells = nn.ModuleList([norse.LIFBoxCell(norse.LIFBoxParameters(tau_mem_inv=torch.tensor(100.0)), dt=1e-3)
                           for _ in fcs])
    model = nn.ModuleDict({"fcs": fcs, "cells": cells})

    def forward(x):
        h = x
        for fc, cell in zip(fcs, cells):
            cur = fc(h)  # Linear over all T at once ([T, B, N] input)
            state, zs = None, []
            for t in range(cur.shape[0]):
                z, state = cell(cur[t], state)
                zs.append(z)
            h = torch.stack(zs)
        return h

    return model, forward


def _step_fn(model, forward, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        out = forward(x)
        loss = nn.functional.cross_entropy(out.sum(0), y)
        loss.backward()
        opt.step()

    return step


def _check_equal(name: str, build_ours, build_theirs, weights, x) -> float:
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        w64 = [(w.double(), b.double()) for w, b in weights]
        ours, theirs = build_ours(w64)[1], build_theirs(w64)[1]
        with torch.no_grad():
            a, b = ours(x.double()), theirs(x.double())
    finally:
        torch.set_default_dtype(default)
    if not torch.equal(a, b):
        raise RuntimeError(f"outputs of ours and {name} differ on {(a != b).float().mean():.2%} of entries")
    if not a.mean() > 0.01:
        raise RuntimeError(f"output layer silent in the {name} configuration: the check would be vacuous")
    return float(a.mean())


def run(repeats: int = 10) -> dict:
    """Time the step for ours (both configurations), snnTorch and Norse: medians of
    ``repeats`` rounds in which each runs one step in turn (a slow spell of the shared
    machine hits all four alike)."""
    try:
        import norse.torch  # noqa: F401
        import snntorch  # noqa: F401
    except ImportError as exc:
        raise UserError(f"bench peers needs the [interop] extra (snntorch, norse): {exc}") from None
    x, y = _inputs()
    row: dict = {"T": T, "batch": B, "sizes": list(SIZES), "rate": RATE, "threads": torch.get_num_threads(),
                 "torch": torch.__version__, "machine": platform.machine()}
    w_snn, w_norse = _weights((3.0, 5.0)), _weights((25.0, 40.0))
    row["snntorch_output_rate"] = _check_equal("snnTorch", lambda w: _ours("snntorch", w), _snntorch, w_snn, x)
    row["norse_output_rate"] = _check_equal("Norse", lambda w: _ours("norse", w), _norse, w_norse, x)
    ours_s, f_ours_s = _ours("snntorch", w_snn)
    snn_m, f_snn = _snntorch(w_snn)
    ours_n, f_ours_n = _ours("norse", w_norse)
    norse_m, f_norse = _norse(w_norse)
    steps = {"ours_snntorch_cfg_ms": _step_fn(ours_s, f_ours_s, x, y), "snntorch_ms": _step_fn(snn_m, f_snn, x, y),
             "ours_norse_cfg_ms": _step_fn(ours_n, f_ours_n, x, y), "norse_ms": _step_fn(norse_m, f_norse, x, y)}
    row.update(interleaved_ms(steps, repeats))
    row["ours_ms"] = max(row["ours_snntorch_cfg_ms"], row["ours_norse_cfg_ms"])
    row["speedup"] = min(row["snntorch_ms"], row["norse_ms"]) / row["ours_ms"]
    return row


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="neuroplastic bench peers")
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    row = run(repeats=3 if a.quick else 20)
    print(f"training step MLP {'-'.join(map(str, SIZES))} LIF, T={T}, B={B}, input rate {RATE}, "
          f"{row['threads']} threads (outputs checked equal first)")
    print(f"{'':<28}{'ms/step':>10}")
    for k in ("ours_snntorch_cfg_ms", "ours_norse_cfg_ms", "snntorch_ms", "norse_ms"):
        print(f"{k[:-3]:<28}{row[k]:>10.1f}")
    print(f"speedup (faster peer / ours): {row['speedup']:.2f}x")
    if a.json:
        write_json(a.json, [row])
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

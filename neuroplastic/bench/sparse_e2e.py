"""End to end: a 90%-sparse spiking MLP trained with the event-driven CSR backend vs the
masked-dense path, same seed: accuracy and time per training step.

    python -m neuroplastic.bench.sparse_e2e [--json FILE] [--epochs E]

Network 784-800-10 LIF (LI readout), every synapse layer 90% sparse (uniform random
mask, seed 0), digits 28x28 (one task), the shape of the DESIGN.md step: T=25 rate-coded
(~30% of the input entries spike), batch 128, SGD lr 0.05, 6 epochs.
Also times the DESIGN.md training step (T=25, B=128, Bernoulli rate 0.1) at 90% and 98%
sparsity. Backends: ``event`` forces the CSR kernels, ``dense`` the masked matmul,
``auto`` lets the cost model choose per layer and call (CSR, spike gather on the masked
weight, or matmul).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

from ..io import write_json
from ..network import mlp
from ..training import Trainer, TrainSettings
from .timing import time_ms


def _sparse_net(backend: str, seed: int = 0, density: float = 0.1):
    torch.manual_seed(seed)
    net = mlp([784, 800, 10], tau_mem=2e-3, dt=1e-3)
    # a different seed from the weight init: the same stream would select the negative weights
    g = torch.Generator().manual_seed(seed + 1000)
    for _, layer in net.synapses():
        layer.set_mask(torch.rand(layer.weight.shape, generator=g) < density)
        with torch.no_grad():  # keep the dense init's input variance (sparse-init practice)
            layer.weight.mul_(density ** -0.5)
        layer.backend = backend
    return net


def train_digits(backend: str, epochs: int = 6, seed: int = 0) -> dict:
    """Train on digits with the given backend; accuracy and wall time."""
    from neuroplastic.datasets import load_digits
    from neuroplastic.encoders import make_encoder

    train, test = load_digits()
    net = _sparse_net(backend, seed)
    s = TrainSettings(epochs=epochs, batch_size=128, lr=0.05, time_steps=25)
    tr = Trainer(net, make_encoder("rate", 25), s, seed=seed, quiet=True)
    t0 = time.perf_counter()
    tr.train_task([(train, None)], 0)
    wall = time.perf_counter() - t0
    # masked weights stay exactly zero
    for _, layer in net.synapses():
        assert torch.all(layer.weight[~layer.mask] == 0)
    return {"backend": backend, "accuracy": tr.evaluate(test), "train_s": wall}


def step_ms(backend: str, repeats: int = 10, density: float = 0.1) -> float:
    """The DESIGN.md training step (T=25, B=128, rate 0.1) on the sparse network."""
    net = _sparse_net(backend, density=density)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(25, 128, 784, generator=g) < 0.1).float()
    y = torch.randint(0, 10, (128,), generator=g)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x).mean(0), y).backward()
        opt.step()

    return time_ms(step, repeats)


BACKENDS = ("event", "dense", "auto")
#: synapse densities of the step timing: 90% sparse (the acceptance point) and 98% sparse
STEP_DENSITIES = (0.1, 0.02)


def run(epochs: int = 6, repeats: int = 10) -> dict:
    out = {b: train_digits(b, epochs) for b in BACKENDS}
    for d in STEP_DENSITIES:
        suffix = "" if d == 0.1 else f"_d{d:g}"
        for b in BACKENDS:
            out[f"step_{b}{suffix}_ms"] = step_ms(b, repeats, density=d)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m neuroplastic.bench.sparse_e2e")
    p.add_argument("--json")
    p.add_argument("--epochs", type=int, default=6)
    a = p.parse_args(argv)
    r = run(a.epochs)
    for b in ("event", "dense", "auto"):
        print(f"{b:>6}: accuracy {r[b]['accuracy']:.2f}%  training {r[b]['train_s']:.1f} s")
    for d in STEP_DENSITIES:
        sfx = "" if d == 0.1 else f"_d{d:g}"
        print(f"training step T=25 B=128 rate 0.1, density {d:g}: CSR event {r[f'step_event{sfx}_ms']:.1f} ms, "
              f"masked dense {r[f'step_dense{sfx}_ms']:.1f} ms, auto dispatch {r[f'step_auto{sfx}_ms']:.1f} ms")
    if a.json:
        write_json(a.json, r)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

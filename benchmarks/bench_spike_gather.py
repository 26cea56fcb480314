"""Fit the spike-gather constants of ``kernels/spike_linear.py`` (forward, training-like:
the weight changes between calls, so ``W^T`` is copied every call).

    python benchmarks/bench_spike_gather.py

Prints, per shape and input rate: spike gather ms, torch matmul ms, the model's
predictions (:func:`spike_ms`, :func:`matmul_ms`) and the measured ns per gathered add.
"""

from __future__ import annotations

import torch
from neuroplastic.kernels.spike_linear import matmul_ms, spike_linear, spike_ms

from neuroplastic.bench.timing import time_ms

SHAPES = [(3200, 784, 800), (192, 784, 800), (32, 4096, 4096), (512, 4096, 4096), (8, 784, 800)]
RATES = (0.02, 0.1, 0.3)


def main() -> None:
    torch.manual_seed(0)
    print(f"{'rows':>6}{'in':>6}{'out':>6}{'rate':>6}{'gather':>9}{'model':>8}{'matmul':>9}{'model':>8}{'ns/add':>8}")
    for rows, n_in, n_out in SHAPES:
        w = torch.randn(n_out, n_in)
        for rate in RATES:
            x = (torch.rand(rows, n_in) < rate).float()

            def gather(x=x, w=w):
                w.add_(0.0)  # a new version each call, as in training
                with torch.no_grad():
                    spike_linear(x, w)

            with torch.no_grad():
                t_s = time_ms(gather, 10)
                t_m = time_ms(lambda x=x, w=w: x @ w.t(), 10)
            adds = rows * n_in * n_out * rate
            print(f"{rows:>6}{n_in:>6}{n_out:>6}{rate:>6}{t_s:>9.2f}{spike_ms(rows, n_in, n_out, rate):>8.2f}"
                  f"{t_m:>9.2f}{matmul_ms(rows, n_in, n_out):>8.2f}{t_s * 1e6 / max(adds, 1):>8.3f}")


if __name__ == "__main__":
    main()

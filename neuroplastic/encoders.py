r"""Encoders: static inputs ``[B, ...]`` in [0, 1] to time-first spike trains ``[T, B, ...]``.

* :class:`RateEncoder` (Bernoulli): :math:`z_t \sim \mathrm{Bernoulli}(g x)` i.i.d. per step.
* :class:`PoissonEncoder`: a Poisson process of rate :math:`x f_{max}` seen through bins of
  ``dt``: :math:`P(z_t = 1) = 1 - e^{-x f_{max} dt}`.
* :class:`LatencyEncoder` (time to first spike): one spike at
  :math:`t^* = \tau \ln\frac{x}{x - \vartheta}` (RC charging, ``x > \vartheta``) or, with
  ``linear=True``, :math:`t^* = (1 - x)(T - 1)`; inputs at or below ``threshold`` never fire.
* :class:`DirectEncoder`: the analogue value repeated every step (a constant current).
* :class:`EventPassthrough`: event data already ``[B, T, ...]`` -> ``[T, B, ...]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .errors import UserError

__all__ = ["RateEncoder", "PoissonEncoder", "LatencyEncoder", "DirectEncoder", "EventPassthrough",
           "make_encoder", "ENCODERS"]


class _Encoder:
    def __init__(self, time_steps: int) -> None:
        if int(time_steps) < 1:
            raise UserError(f"time_steps must be >= 1, got {time_steps}")
        self.time_steps = int(time_steps)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def steps(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """The code one step at a time (``[B, ...]`` per step), for the online trainers:
        memory that does not grow with ``T``. Same distribution as :meth:`__call__`; the
        random draws of sampled codes are made step by step, so they differ from the ones
        :meth:`__call__` makes with the same generator."""
        yield from self(x, generator)

    def chunks(self, x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """The code in chunks of ``size`` consecutive steps (``[k, B, ...]``, the last chunk
        may be shorter): the steps of :meth:`steps`, stacked, with the same random draws."""
        buf: list[torch.Tensor] = []
        for s in self.steps(x, generator):
            buf.append(s)
            if len(buf) == size:
                yield torch.stack(buf)
                buf = []
        if buf:
            yield torch.stack(buf)


class RateEncoder(_Encoder):
    """Bernoulli rate code with probability ``gain * x`` per step."""

    def __init__(self, time_steps: int, gain: float = 1.0) -> None:
        super().__init__(time_steps)
        self.gain = gain

    def __call__(self, x, generator=None):
        p = (self.gain * x).clamp(0, 1)
        u = torch.rand((self.time_steps, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        return (u < p).to(x.dtype)

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        return (self.gain * x).clamp(0, 1)

    def steps(self, x, generator=None):
        p = self.probability(x)
        for _ in range(self.time_steps):
            yield (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) < p).to(x.dtype)

    def chunks(self, x, size, generator=None):
        # one draw of k steps is the same stream of numbers as k draws of one step, without
        # k small allocations per chunk (they fragment the heap over long sequences)
        p = self.probability(x)
        for t0 in range(0, self.time_steps, size):
            k = min(size, self.time_steps - t0)
            # unnamed: nothing of this chunk stays alive in this frame while the next is made
            yield (torch.rand((k, *x.shape), generator=generator, device=x.device, dtype=x.dtype) < p).to(x.dtype)


class PoissonEncoder(RateEncoder):
    """Poisson spikes at ``x * max_rate`` Hz in bins of ``dt`` seconds."""

    def __init__(self, time_steps: int, max_rate: float = 200.0, dt: float = 1e-3) -> None:
        super().__init__(time_steps)
        self.max_rate, self.dt = max_rate, dt

    def __call__(self, x, generator=None):
        p = self.probability(x)
        u = torch.rand((self.time_steps, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        return (u < p).to(x.dtype)


    def probability(self, x: torch.Tensor) -> torch.Tensor:
        return 1 - torch.exp(-x.clamp(min=0) * self.max_rate * self.dt)


class LatencyEncoder(_Encoder):
    """One spike per input, earlier for larger values (see module docstring)."""

    def __init__(self, time_steps: int, tau: float = 5.0, threshold: float = 0.01, linear: bool = False) -> None:
        super().__init__(time_steps)
        self.tau, self.threshold, self.linear = tau, threshold, linear

    def spike_times(self, x: torch.Tensor) -> torch.Tensor:
        """Integer firing step per entry; ``T`` (never) where ``x <= threshold``."""
        T = self.time_steps
        if self.linear:
            t = (1 - x.clamp(0, 1)) * (T - 1)
        else:
            xc = x.clamp(min=self.threshold + 1e-12)
            t = self.tau * torch.log(xc / (xc - self.threshold))
        t = torch.round(t).clamp(max=T - 1)
        return torch.where(x > self.threshold, t, torch.full_like(t, T)).long()

    def __call__(self, x, generator=None):
        t = self.spike_times(x)
        steps = torch.arange(self.time_steps, device=x.device).view(-1, *([1] * x.dim()))
        return (steps == t.unsqueeze(0)).to(x.dtype)

    def steps(self, x, generator=None):
        t = self.spike_times(x)
        for step in range(self.time_steps):
            yield (t == step).to(x.dtype)


class DirectEncoder(_Encoder):
    """The analogue input as a constant current for every step (no sampling)."""

    def __call__(self, x, generator=None):
        return x.unsqueeze(0).expand(self.time_steps, *x.shape)

    def steps(self, x, generator=None):
        for _ in range(self.time_steps):
            yield x


class EventPassthrough(_Encoder):
    """Event data ``[B, T, ...]`` (e.g. SHD frames) made time-first ``[T, B, ...]``."""

    def __call__(self, x, generator=None):
        return x.transpose(0, 1)

    def steps(self, x, generator=None):
        for t in range(x.shape[1]):
            yield x[:, t]


ENCODERS = {"rate": RateEncoder, "poisson": PoissonEncoder, "latency": LatencyEncoder,
            "direct": DirectEncoder, "events": EventPassthrough}


def make_encoder(name: str, time_steps: int, **kw) -> _Encoder:
    """Build an encoder by name (``rate``, ``poisson``, ``latency``, ``direct``, ``events``)."""
    if name not in ENCODERS:
        raise UserError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name](time_steps, **kw)



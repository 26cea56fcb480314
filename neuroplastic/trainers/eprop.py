r"""e-prop (Bellec et al., Nature Communications 2020), the ``eprop`` strategy.

For networks of (recurrent) LIF / ALIF layers with an LI readout, run one step at a
time, with no backpropagation through time. Hidden layer ``l`` receives
:math:`I_t = W x_t + b + W_{rec} z_{t-1}` (no :math:`W_{rec}` for feed-forward layers);
write :math:`\xi_t = [x_t, z_{t-1}, 1]` for its presynaptic signal (the ``1`` carries
the bias) and :math:`\psi_t = \sigma'(v^{pre}_t - \vartheta_t)` for the surrogate
pseudo-derivative. The eligibility vectors follow each neuron's own dynamics
(:math:`v^{pre}_t = a v_{t-1} + g I_t`; ALIF: :math:`b_t = \rho b_{t-1} + (1-\rho) z_{t-1}`,
:math:`\vartheta_t = \vartheta + \beta b_t`; resets detached):

.. math::
    \epsilon^{pre}_t &= a\,\epsilon^{v}_{t-1} + g\,\xi_t, \qquad
    \epsilon^{b}_t = \rho\,\epsilon^{b}_{t-1} + (1-\rho)\,e_{t-1},\
    e_t &= \psi_t\,(\epsilon^{pre}_t - \beta\,\epsilon^{b}_t), \qquad
    \epsilon^{v}_t = \begin{cases}\epsilon^{pre}_t - z_t \beta \epsilon^{b}_t & \text{subtract reset}\
                     (1 - z_t)\,\epsilon^{pre}_t & \text{zero reset}\end{cases}

(LIF: :math:`\beta = 0`; with the subtract reset :math:`e_{ji,t} = \psi_{j,t}\,\bar\xi_{i,t}`
factorises over a presynaptic trace :math:`\bar\xi_t = a \bar\xi_{t-1} + g \xi_t`).
The loss is the online one, :math:`\sum_t w_t\,\mathrm{CE}(o_t, y)` (:math:`w_t = 1/T`;
decoder ``last``: the final step only) on the LI readout
:math:`o_t = \kappa o_{t-1} + g_o (W_{out} z_t + b_{out})`, whose error
:math:`\mathrm{err}_t = w_t(\mathrm{softmax}(o_t) - y)/B` (batch mean) gives the learning signal
:math:`L_t = B\,\mathrm{err}_t` (``feedback = "symmetric"``: :math:`B = W_{out}^\top`;
``"random"``: a fixed random matrix drawn from the run's seed; layers below the last
hidden one always get their own fixed random :math:`B_l`, direct random feedback). With
the readout filter applied to the eligibility, :math:`\bar e_t = \kappa \bar e_{t-1} + g_o e_t`,

.. math:: \nabla W = \sum_t L_t\,\bar e_t^\top, \qquad
          \nabla W_{out} = \sum_t \mathrm{err}_t\,\bar z_t^\top \ (\bar z_t = \kappa \bar z_{t-1} + g_o z_t)

accumulated online (one optimizer step per minibatch). For one hidden layer with
symmetric feedback this is exactly BPTT's gradient of the same loss with the recurrent
input :math:`W_{rec} z_{t-1}` detached (and with no recurrence, exactly BPTT's).
Memory: ``[B, N, M]`` traces per layer, constant in ``T``. ``capture`` layers get
``last_input`` = their presynaptic spikes ``[T, B, ...]`` (plugins' activity).
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError
from ..neurons import ALIF, IF, LI, LIF
from ..neurons import functional as NF
from ..neurons.recurrent import call_forward_hooks
from ..synapses import Linear
from .base import Trainer
from .stepping import step_weight

__all__ = ["EpropTrainer"]

_WINDOW_EPS = 1e-7


def _vec(value, like: torch.Tensor) -> torch.Tensor:
    """A neuron parameter (scalar or per neuron) as a ``[N]`` tensor."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(like).reshape(-1).expand(like.shape[-1])
    return torch.full((like.shape[-1],), float(value), dtype=like.dtype, device=like.device)


class _Layer:
    """The e-prop state of one hidden layer for one minibatch."""

    def __init__(self, syn: Linear, neuron: LIF, B: int, feedback: torch.Tensor | None,
                 kappa: float, g_out: float, T: int) -> None:
        self.syn, self.neuron = syn, neuron
        self.rec = getattr(neuron, "rec", None)
        self.feedback = feedback  # [K, N] or None (symmetric: the readout weights)
        N = syn.out_features
        self.n_in = syn.in_features
        self.M = self.n_in + (N if self.rec is not None else 0) + 1
        proto = syn.weight.detach()
        a, g = neuron.coefficients()
        self.a = _vec(a, proto[:, 0])
        self.g = _vec(g, proto[:, 0])
        self.adaptive = isinstance(neuron, ALIF)
        self.beta = float(neuron.beta_adapt) if self.adaptive else 0.0
        self.rho = float(NF.decay(neuron.dt, neuron.tau_adapt, neuron.integration)) if self.adaptive else 0.0
        self.factorised = (not self.adaptive and neuron.reset_mode == "subtract"
                           and not isinstance(a, torch.Tensor) and not isinstance(g, torch.Tensor))
        zeros = torch.zeros(B, N, dtype=proto.dtype, device=proto.device)
        self.v_leak, self.v_th, self.v_reset = (_vec(v, zeros) for v in (neuron.v_leak, neuron.v_th, neuron.v_reset))
        self.v = zeros + self.v_leak
        self.b = zeros.clone()
        self.z = zeros.clone()
        if self.factorised:
            self.xbar = torch.zeros(B, self.M, dtype=proto.dtype, device=proto.device)
        else:
            self.e_v = torch.zeros(B, N, self.M, dtype=proto.dtype, device=proto.device)
            self.e_b = torch.zeros_like(self.e_v)
            self.e_last = torch.zeros_like(self.e_v)
        self.kappa, self.g_out = kappa, g_out
        if self.factorised:
            # a ring of W pending steps: psi_tau, xbar_tau, sum_{t >= tau} kappa^(t - tau) L_t
            # and kappa^(t - tau) (0 for a free slot)
            W = 1 if kappa <= 0 else max(1, min(T, math.ceil(math.log(_WINDOW_EPS) / math.log(kappa)) + 1))
            self.ring_psi = torch.zeros(W, B, N, dtype=proto.dtype, device=proto.device)
            self.ring_xbar = torch.zeros(W, B, self.M, dtype=proto.dtype, device=proto.device)
            self.ring_signal = torch.zeros(W, B, N, dtype=proto.dtype, device=proto.device)
            self.ring_weight = torch.zeros(W, dtype=proto.dtype, device=proto.device)
            self.ring_live = torch.zeros(W, dtype=torch.bool, device=proto.device)
            self.pushed = 0
        else:
            self.ebar = torch.zeros(B, N, self.M, dtype=proto.dtype, device=proto.device)
        self.grad = torch.zeros(N, self.M, dtype=proto.dtype, device=proto.device)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Advance the neurons one step on input ``x [B, n_in]``; update the eligibility."""
        n = self.neuron
        parts = [x]
        current = torch.nn.functional.linear(x, self.syn.effective_weight().detach(),
                                             None if self.syn.bias is None else self.syn.bias.detach())
        if self.rec is not None:
            parts.append(self.z)
            current = current + torch.nn.functional.linear(self.z, self.rec.effective_weight().detach())
        parts.append(torch.ones_like(x[:, :1]))
        xi = torch.cat(parts, 1)  # [B, M]
        a, g = self.a, self.g
        v_pre = a * self.v + (1 - a) * self.v_leak + g * current
        b = self.rho * self.b + (1 - self.rho) * self.z if self.adaptive else self.b
        th = self.v_th + self.beta * b
        z = (v_pre - th >= 0).to(v_pre.dtype)
        psi = n.surrogate.grad(v_pre - th)
        if n.reset_mode == "subtract":
            v = v_pre - z * th
        else:
            v = v_pre * (1 - z) + z * self.v_reset
        if self.factorised:
            self.xbar = a[0] * self.xbar + g[0] * xi
            W = self.ring_weight.shape[0]
            slot = self.pushed % W
            if self.pushed >= W:  # the oldest step's filter weight is below the cut-off: add it
                self._settle(slot)
            self.ring_psi[slot] = psi
            self.ring_xbar[slot] = self.xbar
            self.ring_signal[slot] = 0.0
            self.ring_weight[slot] = 1.0
            self.ring_live[slot] = True
            self.pushed += 1
        else:
            e_pre = a.view(1, -1, 1) * self.e_v + g.view(1, -1, 1) * xi.unsqueeze(1)
            if self.adaptive:
                self.e_b = self.rho * self.e_b + (1 - self.rho) * self.e_last
            e = psi.unsqueeze(2) * (e_pre - self.beta * self.e_b)
            if n.reset_mode == "subtract":
                self.e_v = e_pre - (z * self.beta).unsqueeze(2) * self.e_b
            else:
                self.e_v = (1 - z).unsqueeze(2) * e_pre
            self.e_last = e
            self.ebar.mul_(self.kappa).add_(e, alpha=self.g_out)
        self.v, self.b, self.z = v, b, z
        return z

    def accumulate(self, signal: torch.Tensor) -> None:
        r"""Add ``sum_b L_t ebar_t`` for the learning signal ``L_t [B, N]`` of this step.

        Factorised layers never form ``ebar``: since
        :math:`\sum_t L_t \bar e_t = \sum_\tau g_o (\psi_\tau \odot \tilde L_\tau)^\top \bar\xi_\tau`
        with :math:`\tilde L_\tau = \sum_{t \ge \tau} \kappa^{t-\tau} L_t`, each step waits in
        a ring of ``W`` steps until :math:`\kappa^{t-\tau} < 10^{-7}` (or the sequence ends) and
        is then added with one ``[N, B] @ [B, M]`` product: ``W`` is fixed by
        :math:`\kappa` (at most ``T``), so memory is constant in ``T``."""
        if not self.factorised:
            self.grad += torch.einsum("bn,bnm->nm", signal, self.ebar)
            return
        self.ring_signal.add_(self.ring_weight.view(-1, 1, 1) * signal.unsqueeze(0))
        self.ring_weight.mul_(self.kappa)

    def _settle(self, slot: int) -> None:
        self.grad.addmm_((self.ring_psi[slot] * self.ring_signal[slot]).T, self.ring_xbar[slot], alpha=self.g_out)
        self.ring_weight[slot] = 0.0
        self.ring_live[slot] = False

    def finish(self) -> None:
        """Add the steps still waiting at the end of the sequence (one product)."""
        if self.factorised:
            live = self.ring_live
            a = (self.ring_psi[live] * self.ring_signal[live]).reshape(-1, self.grad.shape[0])
            self.grad.addmm_(a.T, self.ring_xbar[live].reshape(-1, self.M), alpha=self.g_out)

    def write_grads(self) -> dict[str, torch.Tensor]:
        """Add the accumulated gradient to ``W`` (masked), ``W_rec`` (masked) and ``b``;
        return the dense weight gradients (``"syn"``, ``"rec"``) before masking."""
        _add_grad(self.syn.weight, self.grad[:, :self.n_in], self.syn.mask)
        dense = {"syn": self.grad[:, :self.n_in]}
        if self.rec is not None:
            _add_grad(self.rec.weight, self.grad[:, self.n_in:-1], self.rec.mask)
            dense["rec"] = self.grad[:, self.n_in:-1]
        _add_grad(self.syn.bias, self.grad[:, -1], None)
        return dense


def _add_grad(p: torch.Tensor | None, g: torch.Tensor, mask: torch.Tensor | None) -> None:
    if p is None or not p.requires_grad:
        return
    g = g.reshape(p.shape).to(p.dtype)
    if mask is not None:
        g = g * mask
    p.grad = g.clone() if p.grad is None else p.grad + g


class EpropTrainer(Trainer):
    """e-prop: eligibility traces times online learning signals."""

    name = "eprop"

    def check_model(self) -> None:
        layers = list(self.model.layers.items())
        if len(layers) < 4 or len(layers) % 2:
            raise UserError("the eprop trainer trains mlp networks: Linear -> neuron pairs and an LI readout")
        for i in range(0, len(layers), 2):
            (sn, syn), (nn_, neuron) = layers[i], layers[i + 1]
            if type(syn) is not Linear:
                raise UserError(f"the eprop trainer needs Linear synapses; layer {sn!r} is {type(syn).__name__}")
            last = i == len(layers) - 2
            if last:
                if type(neuron) is not LI:
                    raise UserError(f"the eprop trainer needs an LI readout; {nn_!r} is {type(neuron).__name__}")
            elif not isinstance(neuron, LIF | IF | ALIF) or type(neuron).__name__.startswith("Cuba"):
                raise UserError(f"the eprop trainer supports lif, if and alif neurons (recurrent or not); "
                                f"layer {nn_!r} is {type(neuron).__name__}")
            elif not neuron.detach_reset:
                raise UserError(f"the eprop trainer needs detached resets; layer {nn_!r} has detach_reset=False")
            elif any(p.requires_grad for p in neuron.parameters(recurse=False)):
                raise UserError(f"the eprop trainer does not learn neuron parameters (layer {nn_!r})")
        self.pairs = [(layers[i][1], layers[i + 1][1]) for i in range(0, len(layers) - 2, 2)]
        self.pair_names = [(layers[i][0], layers[i + 1][0]) for i in range(0, len(layers) - 2, 2)]
        self.out_name = layers[-2][0]
        self.out_syn, self.readout = layers[-2][1], layers[-1][1]
        gen = torch.Generator().manual_seed(self.seed + 7919)
        K = self.out_syn.out_features
        self.random_feedback = []
        for j, (syn, _) in enumerate(self.pairs):
            N = syn.out_features
            last = j == len(self.pairs) - 1
            if last and self.settings.feedback == "symmetric":
                self.random_feedback.append(None)
            else:
                self.random_feedback.append((torch.rand(K, N, generator=gen) * 2 - 1) / N ** 0.5)

    def compute_gradients(self, x: torch.Tensor, head: int | None) -> torch.Tensor:
        model = self.model
        model.reset()
        T = self.encoder.time_steps
        x = x.to(self.device)
        B = len(self.targets)  # this rank's samples (data parallel: a shard of x)
        kappa, g_o = (float(c) for c in self.readout.coefficients())
        state = [_Layer(syn, n, B, None if fb is None else fb.to(syn.weight), kappa, g_o, T)
                 for (syn, n), fb in zip(self.pairs, self.random_feedback)]
        W_out = self.out_syn.effective_weight().detach()
        b_out = self.out_syn.bias.detach() if self.out_syn.bias is not None else None
        K_all = W_out.shape[0]
        lo, hi = (0, K_all)
        if head is not None and model.n_heads > 1:
            lo, hi = head * model.n_out, (head + 1) * model.n_out
        onehot = torch.zeros(B, hi - lo, dtype=W_out.dtype, device=W_out.device)
        onehot[torch.arange(B), self.targets] = 1.0
        o = torch.zeros(B, K_all, dtype=W_out.dtype, device=W_out.device) + float(self.readout.v_leak)
        zbar = torch.zeros(B, W_out.shape[1] + 1, dtype=W_out.dtype, device=W_out.device)
        g_out = torch.zeros(K_all, W_out.shape[1] + 1, dtype=W_out.dtype, device=W_out.device)
        captures = {id(s.syn): [] for s in state if s.syn.capture}
        if self.out_syn.capture:  # the readout's input: the last hidden layer's spikes
            captures[id(self.out_syn)] = []
        total = 0.0
        steps = 0
        with torch.no_grad():
            for s in self.encoder.steps(x, self.generator):
                h = self.local(s, 0).reshape(B, -1).to(W_out.dtype)
                for layer in state:
                    if id(layer.syn) in captures:
                        captures[id(layer.syn)].append(h)
                    h = layer.step(h)
                    # the layers' forward hooks see the step as a forward call would (the
                    # dormant monitor's firing rates)
                    call_forward_hooks(layer.neuron, (h.unsqueeze(0),), h.unsqueeze(0))
                if id(self.out_syn) in captures:
                    captures[id(self.out_syn)].append(h)
                o = (kappa * o + (1 - kappa) * float(self.readout.v_leak)
                     + g_o * torch.nn.functional.linear(h, W_out, b_out))
                logits = o[:, lo:hi]
                w = step_weight(self.settings.decoder, steps, T)
                p = torch.softmax(logits, 1)
                total += float(torch.nn.functional.cross_entropy(logits, self.targets)) * w
                err = torch.zeros_like(o)
                err[:, lo:hi] = (p - onehot) * (w / B)  # the gradient of the batch-mean loss
                zbar = kappa * zbar + g_o * torch.cat([h, torch.ones_like(h[:, :1])], 1)
                g_out += err.T @ zbar
                for layer in state:
                    layer.accumulate(err @ (W_out if layer.feedback is None else layer.feedback))
                steps += 1
        for layer, (syn_name, neuron_name) in zip(state, self.pair_names):
            layer.finish()
            dense = layer.write_grads()
            self.dense_grads[syn_name] = dense["syn"]
            if "rec" in dense:
                self.dense_grads[f"{neuron_name}.rec"] = dense["rec"]
            if id(layer.syn) in captures:
                layer.syn.last_input = torch.stack(captures[id(layer.syn)])
        if id(self.out_syn) in captures:
            self.out_syn.last_input = torch.stack(captures[id(self.out_syn)])
        _add_grad(self.out_syn.weight, g_out[:, :-1], self.out_syn.mask)
        self.dense_grads[self.out_name] = g_out[:, :-1]
        _add_grad(self.out_syn.bias, g_out[:, -1], None)
        self.add_penalty()
        return torch.tensor(total)

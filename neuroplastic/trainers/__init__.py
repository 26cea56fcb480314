"""Trainer strategies: how a minibatch becomes weight gradients.

* ``bptt`` -- :class:`~.bptt.BPTTTrainer`: surrogate-gradient backpropagation through time.
* ``ottt`` (alias ``online``) -- :class:`~.ottt.OTTTTrainer`: online training through time
  with presynaptic traces, memory constant in ``T``.
* ``eprop`` -- :class:`~.eprop.EpropTrainer`: e-prop eligibility traces and learning
  signals, for (recurrent) LIF/ALIF networks, memory constant in ``T``.
* ``dsr`` -- :class:`~.dsr.DSRTrainer`: differentiation on the (weighted) firing-rate
  representation.

All share :class:`~.base.Trainer`'s step, task loop and evaluation, so the continual
runner and every plugin work with each of them unchanged.
"""

from __future__ import annotations

from .base import ALIASES, DECODERS, TRAINER_NAMES, Trainer, TrainSettings, decode, make_optimizer
from .bptt import BPTTTrainer
from .dsr import DSRTrainer
from .eprop import EpropTrainer
from .ottt import OTTTTrainer

__all__ = ["Trainer", "TrainSettings", "decode", "make_optimizer", "make_trainer", "TRAINERS", "DECODERS",
           "TRAINER_NAMES", "ALIASES", "BPTTTrainer", "OTTTTrainer", "EpropTrainer", "DSRTrainer"]

TRAINERS: dict[str, type[Trainer]] = {"bptt": BPTTTrainer, "ottt": OTTTTrainer, "eprop": EpropTrainer,
                                      "dsr": DSRTrainer}


def make_trainer(model, encoder, settings: TrainSettings, plugins=None, device="cpu", seed: int = 0,
                 quiet: bool = False) -> Trainer:
    """The trainer strategy named by ``settings.trainer``."""
    return TRAINERS[ALIASES.get(settings.trainer, settings.trainer)](model, encoder, settings, plugins, device,
                                                                      seed, quiet)

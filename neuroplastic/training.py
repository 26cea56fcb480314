"""Compatibility module: the trainers live in :mod:`neuroplastic.trainers`.

``Trainer`` here is the BPTT strategy (what this module held before the trainers were
strategies).
"""

from __future__ import annotations

from .trainers import DECODERS, TrainSettings, decode, make_optimizer, make_trainer
from .trainers.bptt import BPTTTrainer as Trainer

__all__ = ["TrainSettings", "Trainer", "decode", "make_optimizer", "make_trainer", "DECODERS"]

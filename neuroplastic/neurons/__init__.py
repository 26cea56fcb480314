"""Spiking neurons (LIF, IF, CubaLIF, ALIF), their recurrent populations (RecurrentLIF,
RecurrentALIF) and the LI readout; maths in ``functional``."""

from . import functional
from .modules import ALIF, IF, LI, LIF, CubaLI, CubaLIF, Neuron
from .recurrent import RecurrentALIF, RecurrentLIF, RecurrentState

NEURONS = {"lif": LIF, "if": IF, "cubalif": CubaLIF, "alif": ALIF, "li": LI, "cubali": CubaLI}
#: neuron kinds that have a recurrent population (``mlp(..., recurrent=True)``)
RECURRENT_NEURONS = {"lif": RecurrentLIF, "alif": RecurrentALIF}

__all__ = ["functional", "Neuron", "LIF", "IF", "CubaLIF", "ALIF", "LI", "CubaLI", "NEURONS",
           "RecurrentLIF", "RecurrentALIF", "RecurrentState", "RECURRENT_NEURONS"]

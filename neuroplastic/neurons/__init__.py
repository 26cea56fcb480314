"""Spiking neurons (LIF, IF, CubaLIF, ALIF) and the LI readout; maths in ``functional``."""

from . import functional
from .modules import ALIF, IF, LI, LIF, CubaLI, CubaLIF, Neuron

NEURONS = {"lif": LIF, "if": IF, "cubalif": CubaLIF, "alif": ALIF, "li": LI, "cubali": CubaLI}

__all__ = ["functional", "Neuron", "LIF", "IF", "CubaLIF", "ALIF", "LI", "CubaLI", "NEURONS"]

"""neuroplastic: spiking neural networks that keep learning.

Spiking neurons (LIF, IF, CubaLIF, ALIF, LI) with surrogate gradients, BPTT training,
a continual runner with method plugins (HLOP, GPM, EWC, GraNet...), event-driven sparse
kernels and export to neuromorphic formats. See README.md and docs/.
"""

from .encoders import DirectEncoder, LatencyEncoder, PoissonEncoder, RateEncoder, make_encoder
from .errors import UserError
from .network import SNN, cnn, mlp
from .neurons import ALIF, IF, LI, LIF, CubaLIF
from .surrogate import Surrogate, get_surrogate, spike
from .synapses import Conv2d, Flatten, Linear

__version__ = "0.1.0"

__all__ = [
    "ALIF", "IF", "LI", "LIF", "CubaLIF", "SNN", "mlp", "cnn", "Linear", "Conv2d", "Flatten",
    "Surrogate", "get_surrogate", "spike", "RateEncoder", "PoissonEncoder", "LatencyEncoder",
    "DirectEncoder", "make_encoder", "UserError", "__version__",
]

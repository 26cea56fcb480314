"""Getting models out and back in: NIR graphs (:mod:`.nir_graph`, parameter table in
:mod:`.nir_params`), our sparse HDF5 archive (:mod:`.archive`), fixed-point weights
(:mod:`.quantize`) and models from run directories or checkpoints (:mod:`.source`).
See docs/formats.md."""

from .nir_graph import agreement, from_nir, read_nir, to_nir, write_nir
from .nir_params import NEURON_TABLE, Timing, continuous_tau

__all__ = ["to_nir", "from_nir", "read_nir", "write_nir", "agreement", "NEURON_TABLE", "Timing", "continuous_tau"]

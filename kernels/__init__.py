"""Event-driven sparse spiking synapses: only presynaptic neurons that fired touch memory,
only existing synapses are updated.

* :mod:`.formats`  — :class:`CSR` (presynaptic rows) + :class:`CSCIndex` (transposed index).
* :mod:`.cpu`      — numba CPU kernels (forward push, input gradient, SDDMM weight gradient,
  Hebbian and eligibility-trace updates).
* :mod:`.cuda`     — the same ops in numba.cuda (warp-free, simulator-testable).
* :mod:`.autograd` — :class:`EventLinearFunction`, :func:`event_linear`, :class:`CSRCache`.
* :mod:`.dispatch` — :func:`choose_backend`, :func:`sparse_linear`.

See ``docs/kernels.md`` for the maths and the measurements behind the dispatch rule.
"""

from .threads import match_torch_threads

match_torch_threads()  # start numba's pool now, before it can change torch's thread count

from . import cpu  # noqa: E402
from .autograd import (  # noqa: E402
    CSRCache,
    EventLinearFunction,
    event_linear,
    event_linear_values,
    masked_values,
)
from .cpu import (  # noqa: E402
    eligibility_trace_update,
    hebbian_update,
    sddmm_weight_grad,
    spmm_backward_input,
    spmm_forward,
)
from .dispatch import choose_backend, sparse_linear  # noqa: E402
from .formats import CSR, CSCIndex, csr_from_dense, csr_from_mask  # noqa: E402

__all__ = [
    "CSR",
    "CSCIndex",
    "CSRCache",
    "EventLinearFunction",
    "choose_backend",
    "cpu",
    "csr_from_dense",
    "csr_from_mask",
    "eligibility_trace_update",
    "event_linear",
    "event_linear_values",
    "hebbian_update",
    "masked_values",
    "sddmm_weight_grad",
    "sparse_linear",
    "spmm_backward_input",
    "spmm_forward",
]

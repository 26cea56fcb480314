"""Event-driven kernels vs torch dense and torch.sparse (same as ``neuroplastic bench kernels``).

    python benchmarks/bench_kernels.py [--json FILE] [--quick] [--calibrate]
"""

import sys

from neuroplastic.bench.kernels import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

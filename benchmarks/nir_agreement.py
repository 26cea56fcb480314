"""NIR spike agreement between neuroplastic and Norse / snnTorch / SpikingJelly / Rockpool,
both directions, LIF / CubaLIF / IF (and a small CNN); see neuroplastic/bench/nir_agreement.py.

    python benchmarks/nir_agreement.py [--seeds 0 1 2 3 4] [--json FILE]
"""

import sys

from neuroplastic.bench.nir_agreement import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Training step vs snnTorch and Norse (same as ``neuroplastic bench peers``).

    python benchmarks/bench_peers.py [--json FILE] [--quick]
"""

import sys

from neuroplastic.bench.peers import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

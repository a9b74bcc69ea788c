"""Speed of the overlap search: Hamming comparison of N upstream x M evaluation 64-bit pHashes.

    python benchmarks/bench_overlap.py [N] [M]
"""

import sys
import time

import numpy as np

from fundusfm.data.overlap import hamming_pairs

n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
m = int(sys.argv[2]) if len(sys.argv) > 2 else 5_000
rng = np.random.default_rng(0)
a = rng.integers(0, 2**63, n, dtype=np.uint64)
b = rng.integers(0, 2**63, m, dtype=np.uint64)
t = time.perf_counter()
i, j, d = hamming_pairs(a, b, threshold=4)
dt = time.perf_counter() - t
print(f"{n} x {m} = {n * m / 1e6:.0f}M comparisons in {dt:.2f} s ({n * m / dt / 1e6:.0f}M/s), {len(i)} pairs <= 4 bits")

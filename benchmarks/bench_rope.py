"""rope family: every kernel and peer of its registry ops on the real 0.8B/9B/27B shapes (bf16). Run with
`pytest benchmarks/bench_rope.py -m bench --benchmark-only -p no:xdist`, or `python3 -m benchmarks --families rope`."""

from benchmarks.common import family_bench

test_bench = family_bench("rope")

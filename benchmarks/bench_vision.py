"""vision family: every kernel and peer of its registry ops on the real 0.8B/9B/27B shapes (bf16). Run with
`pytest benchmarks/bench_vision.py -m bench --benchmark-only -p no:xdist`, or `python3 -m benchmarks --families vision`."""

from benchmarks.common import family_bench

test_bench = family_bench("vision")

"""Seconds per step of the compiled incremental loop alone (default LLM, greedy), at batch sizes B:
autotune.measure_incremental (calls of 8 and 40 steps back to back on one state, the difference over 32
steps: no per-call or prefill cost; median of 3) with B rows. docs/benchmarks.md, issue 12.

    python scripts/measure_loop_step.py [1,8]
"""
import sys

from specjax import api, autotune
from specjax.engine import Engine

arg = sys.argv[1] if len(sys.argv) > 1 else "1,8"
try:
    sizes = [int(x) for x in arg.split(",")]
    assert sizes and min(sizes) >= 1
except (ValueError, AssertionError):
    sys.exit(f"measure_loop_step.py: batch sizes must be positive integers separated by commas, got {arg!r}")
engine = Engine(api.load(None))
for B in sizes:
    s = autotune.measure_incremental(engine, rows=B)
    print(f"B={B}: step {s * 1e3:.1f} ms, {B / s:.1f} tokens/s")

"""Seconds per step of the compiled incremental loop alone (default LLM, greedy), at batch sizes B: calls of
8 and 40 steps back to back on one state, the difference over 32 steps (no per-call or prefill cost), as
autotune.measure_incremental does for B = 1. Three measurements per B (docs/benchmarks.md, issue 12).

    python scripts/measure_loop_step.py [1,8]
"""
import sys
import time

import jax
import numpy as np

from specjax import api
from specjax.engine import _STEPS, Engine
from specjax.incremental import STEP_ROOM, incremental_loop
from specjax.sampling import SamplingConfig

llm = api.load(None)
engine = Engine(llm)
static = dict(cfg=llm.cfg, sampling_cfg=SamplingConfig(), eos_ids=())
prompt = [int(t) for t in np.arange(100) % 1000 + 1]
for B in [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "1,8").split(",")]:
    out = []
    for _ in range(3):
        state, _ = engine.init_state([prompt] * B, 64, 0, STEP_ROOM, 64)
        exe = engine._executable("incremental", incremental_loop, (engine.llm.params, state, _STEPS), static)
        state = jax.block_until_ready(exe(engine.llm.params, state, np.int32(4)))  # warm
        t0 = time.perf_counter()
        state = jax.block_until_ready(exe(engine.llm.params, state, np.int32(8)))
        t1 = time.perf_counter()
        jax.block_until_ready(exe(engine.llm.params, state, np.int32(40)))
        t2 = time.perf_counter()
        out.append(((t2 - t1) - (t1 - t0)) / 32)
    print(f"B={B}: step ms {[round(x * 1e3, 1) for x in out]}, {B / np.median(out):.1f} tokens/s")

"""Teacher-forced reading (feature.data.features): 32 rows x 384 positions, the unpacked params (XLA) vs
packed (the kernel), alternating, twice.   python docs/experiments/prefill-kernel/tf_probe.py"""
import time, numpy as np, json
from specjax import api, skinny
from specjax.feature import data as fdata
llm = api.load(None)
taps = (2, 15, 27)
rng = np.random.default_rng(0)
tokens = rng.integers(100, 40000, (32, 384)).astype(np.int32)
mask = np.zeros_like(tokens); mask[:, 100:330] = 1
for name, p in (("xla", llm.params), ("kernel", skinny.pack_params(llm.params, llm.cfg))) * 2:
    fdata.features(p, llm.cfg, tokens[:8], taps, 16, mask=mask[:8])
    t = time.perf_counter(); fdata.features(p, llm.cfg, tokens, taps, 16, mask=mask); dt = time.perf_counter() - t
    print(name, f"{dt:.1f} s, {int(mask.sum()) / dt:.0f} target tokens/s, {32 * 330 / dt:.0f} positions/s")

"""One-pass feature data vs generating then reading back (docs/benchmarks.md, 2026-12-06 late night):
times `feature.data.generate` on 8 real training prompts (128 tokens), then the teacher-forced features pass
over the same continuations, and compares features (relative, real positions) and top-k.

    python scripts/check_one_pass_data.py
"""
import sys, time
from pathlib import Path; ROOT = Path(__file__).resolve().parent.parent; sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "scripts"))
import numpy as np
from specjax import api, skinny
from specjax.feature import data
from specjax.boost.data import make_samples
import train_feature_ssm as tfs
llm = api.load(None)
ids = tfs.prompt_ids(llm.tokenizer, 3000, 256)[2900:2900+8]
eos = tuple(sorted(set(llm.cfg.eos_token_ids) | set(getattr(llm.tokenizer, "eos_token_ids", ()) or ())))
packed = skinny.pack_params(llm.params, llm.cfg)
t = time.perf_counter(); conts, F, I, P = data.generate(packed, llm.cfg, ids, 128, (2, 15, 27), 16, eos, 384); t1 = time.perf_counter() - t
t = time.perf_counter(); conts, F, I, P = data.generate(packed, llm.cfg, ids, 128, (2, 15, 27), 16, eos, 384); t2 = time.perf_counter() - t
n = sum(map(len, conts))
print(f"one pass: {t1:.1f}s (with compile), {t2:.1f}s -> {n} tokens, {n/t2:.1f} tok/s", flush=True)
tokens, mask = make_samples(ids, conts, 384, 256)
t = time.perf_counter(); f2, i2, p2 = data.features(llm.params, llm.cfg, tokens, (2, 15, 27), 16, mask=mask); t4 = time.perf_counter() - t
print(f"features pass {t4:.1f}s")
rel = []
for b, (p, c) in enumerate(zip(ids, conts)):
    end = len(p) + len(c)
    a, r = F[b, :end].astype(np.float32), f2[b, :end].astype(np.float32)
    rel.append(np.abs(a - r).max() / np.abs(r).max())
    if b < 3: print(b, "max abs diff", np.abs(a - r).max(), "max |f|", np.abs(r).max(), "per-tap rel", [float(np.abs(a[:, i*576:(i+1)*576] - r[:, i*576:(i+1)*576]).max() / np.abs(r[:, i*576:(i+1)*576]).max()) for i in range(3)])
print("worst rel diff over rows", max(rel))
agree = []
for b, (p, c) in enumerate(zip(ids, conts)):
    P0, end = len(p), len(p) + len(c)
    agree.append((I[b, P0 - 1:end, 0] == i2[b, P0 - 1:end, 0]).mean())
print("top-1 id agreement", np.mean(agree), "probs max diff", np.abs(P.astype(np.float32) - p2.astype(np.float32))[I > 0].max())

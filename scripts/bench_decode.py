"""Incremental decoding speed on the default LLM, B=1, greedy: specjax vs transformers `generate`,
measured side by side in one run, and specjax's step time against the memory roofline.

    python scripts/bench_decode.py [--llm DIR] [--new-tokens 128] [--repeats 3]

Prints per system the median tokens/s over interleaved repeats, their ratio, and the specjax step
time over the roofline (weight bytes / measured memory read bandwidth). transformers loads the same
GGUF the default checkpoint came from (fp32 on CPU), so both decode the same weights; their greedy
tokens are compared too.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

PROMPTS = [
    "Explain why the sky is blue in two sentences.",
    "Write a short poem about the sea.",
    "What are the three primary colors?",
]


def read_bandwidth(nbytes: int, repeats: int = 5) -> float:
    """Best bytes/s of a full read of an nbytes buffer: numpy (1 thread) and XLA (all threads)."""
    a = np.ones(nbytes // 4, np.float32)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    x = jnp.asarray(a)
    f = jax.jit(lambda v: jnp.sum(v))
    f(x).block_until_ready()
    for _ in range(repeats):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default=None, help="specjax checkpoint (default: the embedded LLM)")
    ap.add_argument("--gguf", default=None, help="GGUF for transformers (default: the embedded one)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch
    import transformers

    from specjax import api, default_model
    from specjax.engine import Engine

    llm = api.load(args.llm)
    gguf = args.gguf or str(default_model.default_gguf_path())
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(default_model.default_gguf_path().parent) if args.gguf is None else str(args.gguf.rsplit("/", 1)[0]),
        gguf_file=gguf.rsplit("/", 1)[-1], dtype=torch.float32).eval()
    engine = Engine(llm)
    prompts = [llm.tokenizer.encode(p, chat=True) for p in PROMPTS]
    n = args.new_tokens
    eos = ()  # no early stop: every run decodes exactly n tokens

    def run_specjax(ids):
        r = engine.generate_incremental([ids], n, eos_ids=eos)[0]
        return r.token_ids, r.seconds

    def run_hf(ids):
        x = torch.tensor([ids])
        with torch.inference_mode():
            t = time.perf_counter()
            out = hf.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              attention_mask=torch.ones_like(x), pad_token_id=0)
            dt = time.perf_counter() - t
        return out[0, len(ids):].tolist(), dt

    for ids in prompts[:1]:  # warm up: compile / first-call costs
        run_specjax(ids)
        run_hf(ids)
    sj, ht, same = [], [], 0
    for rep in range(args.repeats):
        for ids in prompts:
            a, ta = run_specjax(ids)
            b, tb = run_hf(ids)
            sj.append(n / ta)
            ht.append(n / tb)
            same += a == b
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(llm.params))
    bw = read_bandwidth(weight_bytes)
    step = 1.0 / statistics.median(sj)
    roofline = weight_bytes / bw
    print(f"specjax incremental: {statistics.median(sj):.1f} tokens/s (median of {len(sj)})")
    print(f"transformers generate: {statistics.median(ht):.1f} tokens/s (median of {len(ht)})")
    print(f"ratio specjax / transformers: {statistics.median(sj) / statistics.median(ht):.2f}")
    print(f"weights {weight_bytes / 1e6:.0f} MB, read bandwidth {bw / 1e9:.1f} GB/s, roofline "
          f"{roofline * 1e3:.1f} ms/token, specjax step {step * 1e3:.1f} ms = {step / roofline:.2f} x roofline")
    print(f"greedy outputs identical to transformers: {same}/{len(sj)}")


if __name__ == "__main__":
    main()

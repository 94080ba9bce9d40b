"""bf16 weight storage for the CPU kernel against float32 on the default LLM, in one run: the B=1
incremental step time of each (interleaved, medians) and how far greedy outputs agree.

    python scripts/bench_bf16.py [--llm DIR] [--prompts 20] [--new-tokens 128] [--repeats 5]

Greedy divergence: for each of the first --prompts chat prompts (a fixed list, below), the position of
the first new token where the bf16 output differs from the float32 one (none: identical).
"""

from __future__ import annotations

import argparse
import statistics
import time

PROMPTS = [
    "What is the capital of France?", "Write a limerick about a cat.", "Explain gravity simply.",
    "Give me three tips for better sleep.", "Translate 'good morning' into Spanish.",
    "What is 17 times 23?", "Summarize the plot of Cinderella.", "Write a Python function that adds two numbers.",
    "Why is the ocean salty?", "Name five fruits.", "What does a CPU do?", "Describe a sunset.",
    "How many legs does a spider have?", "Write a short thank-you note.", "What is machine learning?",
    "Suggest a name for a bakery.", "What causes rain?", "Tell me a fun fact about owls.",
    "How do I boil an egg?", "What is the largest planet?",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default=None)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from specjax import api, skinny
    from specjax.engine import Engine

    print(skinny.status()[1])
    llm = api.load(args.llm)
    prompts = [llm.tokenizer.encode(p, chat=True) for p in PROMPTS[: args.prompts]]
    engines = {"float32": Engine(llm), "bfloat16": Engine(llm, weight_dtype="bfloat16")}
    del llm
    n = args.new_tokens
    for e in engines.values():
        e.generate_incremental(prompts[:1], n, eos_ids=())  # compile
    times = {k: [] for k in engines}
    for _ in range(args.repeats):
        for k, e in engines.items():
            t = time.perf_counter()
            r = e.generate_incremental(prompts[:1], n, eos_ids=())
            times[k].append(r[0].seconds / n)
    step = {k: statistics.median(v) for k, v in times.items()}
    print(f"B=1 step (prefill included, per token): float32 {step['float32'] * 1e3:.1f} ms, bfloat16 "
          f"{step['bfloat16'] * 1e3:.1f} ms = {step['bfloat16'] / step['float32']:.2f} x float32")
    outs = {k: [r.token_ids for r in e.generate_incremental(prompts, n, eos_ids=())] for k, e in engines.items()}
    firsts = []
    for a, b in zip(outs["float32"], outs["bfloat16"]):
        firsts.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None))
    same = sum(f is None for f in firsts)
    div = [f for f in firsts if f is not None]
    print(f"greedy, {len(prompts)} prompts x {n} tokens: {same} identical; first differing token at "
          f"{sorted(div)} (mean {statistics.mean(div):.1f})" if div else
          f"greedy, {len(prompts)} prompts x {n} tokens: all {same} identical")


if __name__ == "__main__":
    main()

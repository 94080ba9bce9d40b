"""Choose the tree shape for an LLM + SSM ensemble on this machine (see specjax/tree_search.py).

    python scripts/tune_tree.py --prompts runs/default_prompts.jsonl --skip 4000 --count 24 \
        [--llm DIR --ssm S1 --ssm S2] [--measure 5] [--write specjax/default_ssms/tree.json]

1. The LLM's greedy continuations (128 tokens) of held-out prompts (prompts [skip, skip+count) of the
   file: never trained on, and never Spec-Bench) -> coverage c[k] of the first n SSMs' top-k, n = 1..K.
2. Costs on this machine: one SSM forward over W tokens, one LLM tree verification over N tokens.
3. Every expansion <k_1..k_m> (m <= 8, k_i <= 3) ranked by estimated speedup, per ensemble size.
4. The head of the ranking (--measure per ensemble size), the paper's tree and chains, measured with
   the real engine against incremental decoding on the first --measure-prompts of those prompts,
   interleaved (B = 1, greedy, 128 new tokens). The best measured tokens/s wins; --write saves it as
   {"expansion": [...], "num_ssms": n}, which `specjax generate` uses for the shipped default drafters.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from specjax import api  # noqa: E402
from specjax.boost.boosting import topk_predictions  # noqa: E402
from specjax.boost.data import make_samples  # noqa: E402
from specjax.boost.prompts import read_prompt_file  # noqa: E402
from specjax.engine import Engine  # noqa: E402
from specjax.sampling import SamplingConfig  # noqa: E402
from specjax.tree import TreeConfig  # noqa: E402
from specjax.tree_search import Costs, expected_tokens, search, tree_forward_seconds  # noqa: E402

PAPER = (1, 1, 3, 1, 1, 1, 1, 1)


def coverage(ssms, tokens: np.ndarray, mask: np.ndarray, kmax: int = 3) -> list[list[float]]:
    """[n-1][k-1] = P(LLM token in the union of SSMs 0..n-1's top-k) over the masked positions."""
    m = mask.astype(bool)
    m[:, 0] = False
    preds = [topk_predictions(s.params, s.cfg, tokens, kmax) for s in ssms]  # [N, T, kmax] each
    out = []
    for n in range(1, len(ssms) + 1):
        row = []
        for k in range(1, kmax + 1):
            hit = np.zeros(m.shape, bool)
            for p in preds[:n]:
                hit[:, 1:] |= (p[:, :-1, :k] == tokens[:, 1:, None]).any(-1)
            row.append(float((hit & m).sum() / m.sum()))
        out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default=None)
    ap.add_argument("--ssm", action="append", default=[])
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--skip", type=int, default=0)
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--measure", type=int, default=4, help="candidates per ensemble size measured with the engine")
    ap.add_argument("--measure-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--node-budget", type=int, default=64)
    ap.add_argument("--write", default=None, help="save the winner here as JSON")
    ap.add_argument("--out", default=None, help="save the whole report here as JSON")
    args = ap.parse_args(argv)

    ssm_paths = args.ssm
    if not ssm_paths and args.llm is None:  # every shipped drafter, not just those a shipped tree.json uses
        from specjax import default_model

        ssm_paths = [str(p) for p in default_model.default_ssm_dirs()]
    gen = api.Generator.load(llm=args.llm, ssms=ssm_paths, tree="1", drafters="ssm", mode="spec" if ssm_paths else None)
    llm, ssms = gen.llm, list(gen.ssms)
    if not ssms:
        raise SystemExit("error: no SSMs (give --ssm, or ship default drafters)")
    eos = gen.eos_ids()
    texts = read_prompt_file(args.prompts)[args.skip: args.skip + args.count]
    prompts = [llm.tokenizer.encode(t, chat=True)[-96:] for t in texts]
    print(f"{len(prompts)} held-out prompts, {len(ssms)} SSM(s)", file=sys.stderr)

    inc = Engine(llm)
    conts = []
    for i in range(0, len(prompts), 8):
        conts += [r.token_ids for r in inc.generate_incremental(prompts[i:i + 8], args.max_new_tokens,
                                                                SamplingConfig(), 0, eos)]
    tokens, mask = make_samples(prompts, conts, 96 + args.max_new_tokens, 96)
    cov = coverage(ssms, tokens, mask)
    for n, row in enumerate(cov, 1):
        print(f"coverage, first {n} SSM(s): top-1/2/3 = " + " / ".join(f"{c:.3f}" for c in row), file=sys.stderr)

    verify_sizes = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64]
    draft_sizes = [1, 2, 3, 4, 6, 9, 12]
    v = tree_forward_seconds(llm.params, llm.cfg, verify_sizes, repeats=10)
    d = tree_forward_seconds(ssms[0].params, ssms[0].cfg, draft_sizes, repeats=20)
    body = tree_forward_seconds(ssms[0].params, ssms[0].cfg, draft_sizes, repeats=20, head=False)
    costs = Costs(tuple(d), tuple(d.values()), tuple(v), tuple(v.values()), tuple(body.values()))
    print("verify ms: " + " ".join(f"{n}:{t * 1e3:.1f}" for n, t in v.items()), file=sys.stderr)
    print("draft ms:  " + " ".join(f"{n}:{t * 1e3:.2f}" for n, t in d.items()), file=sys.stderr)

    ranked = {n: search(cov[n - 1], costs, n, node_budget=args.node_budget) for n in range(1, len(ssms) + 1)}
    candidates = []
    for n, rows in ranked.items():
        print(f"\nbest estimated trees for {n} SSM(s):", file=sys.stderr)
        for r in rows[:8]:
            print(f"  {','.join(map(str, r['expansion'])):18s} nodes {r['nodes']:2d}  E[tokens] "
                  f"{r['expected_tokens']:.2f}  est. speedup {r['speedup']:.2f}", file=sys.stderr)
        candidates += [(n, r["expansion"]) for r in rows[: args.measure]]
        candidates += [(n, PAPER), (n, (1,) * 4)]
    candidates = [c for c in dict.fromkeys(candidates) if c[0] * sum(np.cumprod(c[1])) <= args.node_budget]

    # The engine, interleaved with incremental decoding, B = 1.
    engines = {"incremental": inc}
    for n, exp in candidates:
        engines[(n, exp)] = Engine(llm, ssms[:n], TreeConfig(expansion=exp, num_ssms=n, node_budget=args.node_budget))
    measure = prompts[: args.measure_prompts]
    stats = {k: [0, 0, 0.0] for k in engines}  # tokens, steps, seconds
    for name, e in engines.items():  # compile outside the timing
        (e.generate_incremental if name == "incremental" else e.generate_spec)([measure[0]], 4, SamplingConfig(), 0, eos)
    for i, p in enumerate(measure):
        names = list(engines)
        for name in names[i % len(names):] + names[: i % len(names)]:
            e = engines[name]
            [r] = (e.generate_incremental if name == "incremental" else e.generate_spec)(
                [p], args.max_new_tokens, SamplingConfig(), 0, eos)
            stats[name][0] += len(r.token_ids)
            stats[name][1] += r.llm_steps
            stats[name][2] += r.seconds
    base = stats["incremental"][0] / stats["incremental"][2]
    rows = []
    for (n, exp) in candidates:
        tok, steps, sec = stats[(n, exp)]
        est = next((r for r in ranked[n] if r["expansion"] == exp), None)
        rows.append({"num_ssms": n, "expansion": list(exp), "mat": tok / steps, "speedup": tok / sec / base,
                     "expected_tokens": expected_tokens(exp, cov[n - 1]),
                     "estimated_speedup": est["speedup"] if est else None})
    rows.sort(key=lambda r: -r["speedup"])
    print("\nmeasured (B=1, greedy, vs incremental on the same prompts):", file=sys.stderr)
    for r in rows:
        print(f"  {r['num_ssms']} SSM(s) {','.join(map(str, r['expansion'])):18s} MAT {r['mat']:.2f} "
              f"(est. {r['expected_tokens']:.2f})  speedup {r['speedup']:.2f} (est. "
              f"{r['estimated_speedup'] or float('nan'):.2f})", file=sys.stderr)
    best = rows[0]
    report = {"date": time.strftime("%Y-%m-%d"), "coverage": cov, "verify_seconds": v, "draft_seconds": d,
              "measured": rows, "best": best, "prompts": args.prompts, "skip": args.skip, "count": args.count}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.write:
        Path(args.write).write_text(json.dumps({"expansion": best["expansion"], "num_ssms": best["num_ssms"]}) + "\n")
        print(f"wrote {args.write}", file=sys.stderr)
    print(json.dumps(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())

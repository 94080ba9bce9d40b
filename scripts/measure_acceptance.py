"""Measure the drafters' acceptance on the default LLM and write specjax/drafters/acceptance.json.

    python scripts/measure_acceptance.py [--prompts FILE] [--count 8] [--max-new-tokens 96] [--write]

Each drafter alone, at the shape the automatic choice uses (SSMs and recycling 3,1,1,1, the feature
SSM its dynamic tree, lookup a chain of 8), greedy, on held-out chat prompts (never Spec-Bench): for every local node j, hits[j] =
steps in which its sequence was accepted. Written: node_acceptance[name][j] = hits[j] / steps (what
the automatic choice sums) and rates[name][d-1][r] = conditional acceptance per depth and rank (the
path scores' calibration); lookup's rates per depth and matched n-gram length, from the chains it
proposes at every root of the outputs (lookup.measure_rates).

With --merged it measures merged mixes instead (with --write, adding them to the file and keeping the
rest): greedy MAT of every subset of two or more of --merged-drafters (default feature,recycle,lookup)
at every budget of the automatic choice up to the subset's node count, on the same prompts. Drafters
that merge propose the same easy tokens, so a mix accepts less than the sum of its members' node
acceptances: the automatic choice uses these measured MATs where it has them (specjax.autotune).

With --temperature T > 0 both measure under sampling at T instead (seeded per batch) and --write puts
the node acceptances, MATs and merged MATs in the file's "sampled" section (the greedy tables and the
rates stay): what the automatic choice reads for sampled decoding (acceptance.section). The path
scores keep their greedy rates under sampling: rates counted on sampled outputs scored lookup's
nodes no better (docs/benchmarks.md, 2026-12-08).
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

from specjax import api, default_model  # noqa: E402
from specjax.drafters import acceptance  # noqa: E402
from specjax.drafters.setup import AUTO_SSM_EXPANSION  # noqa: E402
from specjax.engine import Engine  # noqa: E402
from specjax.sampling import SamplingConfig  # noqa: E402
from specjax.tree import TreeConfig  # noqa: E402


def read_texts(path: str) -> list[str]:
    """{"prompt": str} or {"messages": [...]} (the last user turn) per line."""
    out = []
    for line in Path(path).read_text().split("\n"):
        if not line.strip():
            continue
        row = json.loads(line)
        if isinstance(row.get("prompt"), str):
            out.append(row["prompt"])
        elif row.get("messages"):
            out.append([m["content"] for m in row["messages"] if m.get("role") == "user"][-1])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = ROOT.parent / "shared" / "data" / "boost_prompts"
    ap.add_argument("--prompts", nargs="+", default=[str(data / "chat_prompts.jsonl"), str(data / "context_tasks.jsonl")],
                    help="jsonl files ({prompt} or {messages}); the default drafters never trained on these two")
    ap.add_argument("--skip", type=int, default=5000, help="held out: prompts [skip, skip+count) of each file, interleaved")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--write", action="store_true", help="write specjax/drafters/acceptance.json")
    ap.add_argument("--feature-ssm", default=str(default_model.DEFAULT_SSMS_DIR / "feature"),
                    help="the feature SSM measured as drafter 'feature' (default: the shipped one; skipped if absent)")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="> 0: measure sampled decoding at this temperature (the file's 'sampled' section)")
    ap.add_argument("--merged", action="store_true", help="measure merged mixes (see above) instead of each drafter alone")
    ap.add_argument("--merged-drafters", default="feature,recycle,lookup")
    ap.add_argument("--mixes", default=None,
                    help="with --merged: measure only these mixes (comma list of drafter names joined by '+', e.g. "
                         "ssm0+ssm1+feature+lookup); with --write the file's other mixes are kept")
    ap.add_argument("--only", default=None,
                    help="measure only these drafters alone (comma list, e.g. feature after retraining it); with "
                         "--write the file's other entries are kept")
    args = ap.parse_args(argv)
    if not args.temperature >= 0:
        raise SystemExit(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
    per_file = [read_texts(f)[args.skip: args.skip + -(-args.count // len(args.prompts))] for f in args.prompts]
    texts = [t for group in zip(*per_file) for t in group][: args.count]
    gen = api.Generator.load(mode="incremental")
    llm = gen.llm
    prompts = [llm.tokenizer.encode(t, chat=True)[-256:] for t in texts]
    ssms = [api.load(str(p)) for p in default_model.default_ssm_dirs()]
    eos = gen.eos_ids()
    tree = TreeConfig(expansion=AUTO_SSM_EXPANSION, num_ssms=len(ssms))
    both = Engine(llm, ssms, tree, drafters=("ssm",))
    if args.merged:
        return measure_merged(args, llm, ssms, tree, prompts, eos)
    runs = {d.name: Engine(llm, ssms, tree, drafters=(d,)) for d in both.drafters}
    runs["recycle"] = Engine(llm, drafters=("recycle",))
    runs["lookup"] = Engine(llm, drafters=("lookup",))
    if Path(args.feature_ssm, "feature_config.json").is_file():
        from specjax.drafters import feature

        runs["feature"] = Engine(llm, drafters=("feature",), feature_ssm=feature.load(args.feature_ssm, llm))
    out = {"llm": "SmolLM2-135M-Instruct (default)", "prompts": f"{[Path(p).name for p in args.prompts]} from {args.skip}, {len(prompts)} interleaved",
           "max_new_tokens": args.max_new_tokens, "date": time.strftime("%Y-%m-%d"), "shapes": {},
           "rates": {}, "node_acceptance": {}, "mat": {}}
    if args.only:
        only = args.only.split(",")
        missing = sorted(set(only) - set(runs))
        if missing:
            raise SystemExit(f"--only: no drafter {missing} here (have {sorted(runs)})")
        runs = {n: e for n, e in runs.items() if n in only}
        if args.write and acceptance.SHIPPED.is_file() and args.temperature <= 0:  # the others as shipped; the prompts must be the same ones
            old = json.loads(acceptance.SHIPPED.read_text())
            if (old.get("prompts"), old.get("max_new_tokens")) != (out["prompts"], out["max_new_tokens"]):
                raise SystemExit(f"--only: the shipped file was measured on {old.get('prompts')} with "
                                 f"{old.get('max_new_tokens')} new tokens; use the same --count/--skip/--max-new-tokens")
            out = dict(old, date=out["date"])
    for name, engine in runs.items():
        d = engine.drafters[0]
        hits = np.zeros(1 + d.topology.num_nodes)
        steps = tokens = 0
        results = []
        for i in range(0, len(prompts), args.batch_size):
            res = engine.generate_spec(prompts[i: i + args.batch_size], args.max_new_tokens,
                                       SamplingConfig(temperature=args.temperature), seed=i, eos_ids=eos)
            results += res
            hits += np.asarray(engine.last_hits).sum(0)
            steps += sum(r.llm_steps for r in res)
            tokens += sum(len(r.token_ids) for r in res)
        node = hits[1:] / max(steps, 1)
        out["node_acceptance"][name] = [round(float(x), 4) for x in node]
        out["shapes"][name] = [int(x) for x in d.topology.parents]
        if args.temperature > 0:
            pass  # the rates (path scores' calibration) stay greedy
        elif getattr(d, "dynamic", False):
            # a dynamic tree: its nodes' parents vary per step, so per-rank rates over the static
            # shape mean nothing; its nodes are top-k, scored by the drafter's own probability (a
            # dynamic tree requires confidence), never by rates. The file's rates (if any) stay, for the
            # drafter's static, sampled trees.
            pass
        elif d.kind != "lookup":
            out["rates"][name] = acceptance.from_hits(hits[1:], d.topology, steps)
        else:  # per depth and matched n, on the LLM's own outputs (the chains find proposes at every root)
            from specjax.drafters import lookup

            out["rates"][name] = lookup.measure_rates([r.prompt_ids + r.token_ids for r in results],
                                                      [len(r.prompt_ids) - 1 for r in results], d)
        out["mat"][name] = round(tokens / max(steps, 1), 3)
        print(name, "MAT", out["mat"][name], "node acceptance", out["node_acceptance"][name], flush=True)
    if args.temperature > 0:  # only the sampled section changes
        old = json.loads(acceptance.SHIPPED.read_text()) if acceptance.SHIPPED.is_file() else {}
        sec = sampled_section(args, old, out["prompts"])
        sec["node_acceptance"] = {**sec.get("node_acceptance", {}), **out["node_acceptance"]}
        sec["mat"] = {**sec.get("mat", {}), **out["mat"]}
        out = dict(old, sampled=sec)
    text = json.dumps(out, indent=1)
    if args.write:
        acceptance.SHIPPED.write_text(text + "\n")
        print(f"wrote {acceptance.SHIPPED}")
    else:
        print(text)
    return 0


def sampled_section(args, shipped: dict, prompts: str) -> dict:
    """The file's sampled section to add to: the shipped one when measured the same way (temperature,
    prompts, tokens), else a new one (then --only / --mixes, which keep the rest, are refused)."""
    key = {"temperature": args.temperature, "prompts": prompts, "max_new_tokens": args.max_new_tokens}
    sec = shipped.get(acceptance.SAMPLED) or {}
    if all(sec.get(k) == v for k, v in key.items()):
        return dict(sec)
    if sec and (args.only or args.mixes):
        raise SystemExit(f"--only / --mixes: the shipped sampled statistics were measured at "
                         f"{ {k: sec.get(k) for k in key} }, these at {key}: measure them all again")
    return dict(key)


def measure_merged(args, llm, ssms, tree, prompts, eos) -> int:
    import itertools

    from specjax import autotune
    from specjax.drafters import feature

    fs = feature.load(args.feature_ssm, llm) if Path(args.feature_ssm, "feature_config.json").is_file() else None
    names = tuple(args.merged_drafters.split(","))
    kinds = (["ssm"] if ssms else []) + (["feature"] if fs is not None else []) + ["recycle", "lookup"]
    every = Engine(llm, ssms, tree, drafters=tuple(kinds), feature_ssm=fs).drafters
    missing = sorted(set(names) - {d.name for d in every})
    if missing:
        raise SystemExit(f"--merged-drafters: no drafter {missing} here (have {[d.name for d in every]})")
    subsets = [s for r in range(2, len(names) + 1) for s in itertools.combinations([d for d in every if d.name in names], r)]
    if args.mixes:
        want = [m.strip() for m in args.mixes.split(",") if m.strip()]
        formed = {"+".join(d.name for d in s): s for s in subsets}
        unknown = [m for m in want if m not in formed]
        if unknown:
            raise SystemExit(f"--mixes: {unknown} not mixes of --merged-drafters {names} in the engine's order "
                             f"(e.g. {list(formed)[:3]})")
        subsets = [formed[m] for m in want]
    merged = {}
    for subset in subsets:
        key = "+".join(d.name for d in subset)
        pool = sum(d.topology.num_nodes for d in subset)
        merged[key] = {}
        for n in autotune.BUDGETS:
            if n > pool:
                break
            engine = Engine(llm, ssms, tree, drafters=subset, budget=n, feature_ssm=fs)
            steps = tokens = 0
            for i in range(0, len(prompts), args.batch_size):
                res = engine.generate_spec(prompts[i: i + args.batch_size], args.max_new_tokens,
                                           SamplingConfig(temperature=args.temperature), seed=i, eos_ids=eos)
                steps += sum(r.llm_steps for r in res)
                tokens += sum(len(r.token_ids) for r in res)
            merged[key][str(n)] = round(tokens / max(steps, 1), 3)
            print(key, "budget", n, "MAT", merged[key][str(n)], flush=True)
    shipped = json.loads(acceptance.SHIPPED.read_text()) if acceptance.SHIPPED.is_file() else {}
    files = f"{[Path(p).name for p in args.prompts]} from {args.skip}, {len(prompts)} interleaved"
    out = sampled_section(args, shipped, files) if args.temperature > 0 else shipped
    where = (f"{files}, {f'T = {args.temperature:g}' if args.temperature > 0 else 'greedy'}, "
             f"{args.max_new_tokens} new tokens")
    if args.mixes and out.get("merged") and out.get("merged_prompts") != where:
        raise SystemExit(f"--mixes: the shipped mixes were measured on {out.get('merged_prompts')}, these on {where}: "
                         f"use the same --count/--skip/--max-new-tokens")
    out["merged"] = {**out.get("merged", {}), **merged} if args.mixes else merged
    out["merged_prompts"] = where
    if args.temperature > 0:
        out = dict(shipped, sampled=out)
    if args.write:
        acceptance.SHIPPED.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {acceptance.SHIPPED}")
    else:
        print(json.dumps(merged, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

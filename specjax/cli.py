"""`specjax generate ...`: the command-line front end."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path


def _add_generate(sub):
    p = sub.add_parser("generate", help="generate text with an LLM, speculatively or incrementally")
    p.add_argument("--llm", help="specjax checkpoint dir, HF model dir or .gguf (default: the embedded "
                                 "SmolLM2-135M-Instruct)")
    p.add_argument("--mode", choices=["incremental", "spec"], default=None,
                   help="decoding mode (default: spec when drafters are available, else incremental)")
    p.add_argument("--ssm", action="append", default=[], metavar="DIR",
                   help="a speculative model (repeat for an ensemble)")
    p.add_argument("--tree", default="auto",
                   help="'auto' (default): drafters and budget chosen for this machine from measured costs "
                        "(cached) and the drafters' acceptance (it may choose incremental decoding); or the SSMs' "
                        "expansion k1,...,km (every proposed node is verified unless --budget is given)")
    p.add_argument("--node-budget", type=int, default=64, help="max tree nodes per step over all SSMs")
    p.add_argument("--drafters", default=None,
                   help="comma list of ssm, recycle, lookup (default: every one that applies)")
    p.add_argument("--budget", type=int, default=None,
                   help="verify the N best proposed nodes per step (by calibrated path score)")
    p.add_argument("--recycle-table", default=None, help="start token recycling from this saved table")
    p.add_argument("--save-recycle-table", default=None, help="save the recycling table here at the end")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompts", help='jsonl file: {"prompt": str} or {"prompt_ids": [int, ...]} per line')
    p.add_argument("--chat", action="store_true", help="wrap text prompts in the model's chat template")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-len", type=int, default=None, help="cache slots per request (default: sized "
                                                              "from the prompts)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--output", help="write one json line per prompt here")
    p.add_argument("--mesh", default=None, help="run over a device mesh: 'dp=2,tp=4' (dp splits the batch, "
                                                "tp the LLM), 'tp=8', or 'auto' (every device on tp); "
                                                "default: one device")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host: jax.distributed.initialize first, from $SPECJAX_COORDINATOR, "
                        "$SPECJAX_NUM_PROCESSES, $SPECJAX_PROCESS_ID or the detected cluster (TPU pod, SLURM); "
                        "run the same command in every process, process 0 writes the output")
    p.set_defaults(func=cmd_generate)


def read_prompts(path: str) -> list[dict]:
    """Reads a prompts jsonl file; each line {"prompt": str} or {"prompt_ids": [int, ...]}."""
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"error: prompts file {path} does not exist")
    rows = []
    for i, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"error: {path}:{i} is not valid JSON ({e.msg})")
        if not isinstance(row, dict) or not (isinstance(row.get("prompt"), str) or
                                             isinstance(row.get("prompt_ids"), list)):
            raise SystemExit(f'error: {path}:{i} needs "prompt" (a string) or "prompt_ids" (a list of ints)')
        rows.append(row)
    if not rows:
        raise SystemExit(f"error: prompts file {path} holds no prompts")
    return rows


def cmd_generate(args) -> int:
    from specjax import api
    from specjax.sampling import SamplingConfig

    if args.prompt is None and args.prompts is None:
        raise SystemExit("error: give --prompt TEXT or --prompts FILE.jsonl")
    rows = [{"prompt": args.prompt}] if args.prompt is not None else read_prompts(args.prompts)
    try:
        sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if args.distributed:
        from specjax.sharding import init_distributed

        init_distributed()
    t_load = time.perf_counter()
    gen = api.Generator.load(llm=args.llm, ssms=args.ssm, tree=args.tree, node_budget=args.node_budget,
                             max_len=args.max_len, mode=args.mode, mesh=args.mesh, drafters=args.drafters,
                             budget=args.budget, recycle_table=args.recycle_table,
                             log=lambda m: print(m, file=sys.stderr))
    print(f"loaded {gen.describe()} in {time.perf_counter() - t_load:.1f}s", file=sys.stderr)
    if gen.choice is not None:
        print(f"auto: {gen.choice.reason}", file=sys.stderr)
    outs = gen.generate_rows(rows, chat=args.chat, max_new_tokens=args.max_new_tokens, sampling=sampling,
                             seed=args.seed, batch_size=args.batch_size)
    if args.distributed:
        import jax

        if jax.process_index() != 0:
            return 0  # every process holds the same outputs: process 0 writes them
    sink = open(args.output, "w") if args.output else None
    total_tokens = total_steps = 0
    for out in outs:
        if sink:
            sink.write(json.dumps(out) + "\n")
        else:
            print(out["text"])
            print("-" * 40)
        total_tokens += len(out["token_ids"])
        total_steps += out["llm_steps"]
    total_seconds = sum({o["batch"]: o["seconds"] for o in outs}.values())  # a batch's time once
    if sink:
        sink.close()
    mat = total_tokens / max(total_steps, 1)
    by = {}
    for out in outs:
        for name, n in out.get("drafter_tokens", {}).items():
            by[name] = by.get(name, 0) + n
    per = (" accepted_by=" + ",".join(f"{k}:{v}" for k, v in by.items())) if by else ""
    print(f"mode={gen.mode} prompts={len(outs)} new_tokens={total_tokens} llm_steps={total_steps} "
          f"MAT={mat:.2f}{per} tokens/s={total_tokens / max(total_seconds, 1e-9):.1f} "
          f"compile_s={gen.engine.compile_seconds:.1f} (not in tokens/s)", file=sys.stderr)
    if args.save_recycle_table:
        table = gen.engine.persistent.get("recycle_table")
        if table is None:
            raise SystemExit("error: --save-recycle-table: token recycling did not run (drafter 'recycle' unused)")
        from specjax.drafters import recycle

        recycle.save(args.save_recycle_table, table, gen.llm)
    return 0


def _add_boost(sub):
    p = sub.add_parser("boost", help="boost-tune an ensemble of SSMs on the LLM's own continuations")
    p.add_argument("--llm", default=None, help="the LLM (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--prompts", nargs="+", required=True, metavar="FILE",
                   help='prompt files: .jsonl with a "prompt", "question" or "instruction" field, or .txt, one per line')
    p.add_argument("--num-ssms", type=int, default=1, help="SSMs in the ensemble (boosting rounds)")
    p.add_argument("--ssm-config", default="tiny", help="preset (micro, tiny, base, small) or a JSON file of "
                                                       "ModelConfig fields overriding 'tiny'")
    p.add_argument("--out", required=True, help="output directory: OUT/ssm_0, OUT/ssm_1, ... and logs")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (same config)")
    p.add_argument("--init", choices=["llm", "random"], default="llm",
                   help="SSM embedding from the LLM's (projected to the SSM's width) or random")
    p.add_argument("--boost-mode", choices=["drop", "positions", "reweight"], default="drop",
                   help="drop the samples the ensemble covers (the paper's), zero the covered positions' "
                        "weights, or scale them by --covered-weight")
    p.add_argument("--covered-weight", type=float, default=0.25,
                   help="--boost-mode reweight: loss weight of the tokens the ensemble already predicts")
    g = p.add_argument_group("data")
    g.add_argument("--max-prompts", type=int, default=None, help="use the first N prompts")
    g.add_argument("--max-prompt-tokens", type=int, default=96, help="keep a prompt's last N tokens")
    g.add_argument("--max-new-tokens", type=int, default=64, help="LLM tokens generated per prompt")
    g.add_argument("--data-modes", default="greedy", help="comma list of greedy, sample")
    g.add_argument("--temperature", type=float, default=0.8, help="for --data-modes sample")
    g.add_argument("--gen-batch-size", type=int, default=8, help="prompts per LLM generation batch")
    g.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the chat template")
    g.add_argument("--data-from", default=None, metavar="DIR",
                   help="reuse another run's data directory (RUN/data: same LLM, data config and prompts)")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=1000, help="optimiser steps per SSM")
    g.add_argument("--batch-size", type=int, default=16, help="samples per step")
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--warmup", type=int, default=50, help="linear warmup steps (then cosine decay)")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--freeze-embed", action="store_true", help="do not train the (tied) embedding")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpoint-every", type=int, default=200)
    g.add_argument("--log-every", type=int, default=25)
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-prompts", type=int, default=8, help="last N prompts held out for evaluation")
    g.add_argument("--eval-tree", default="1,1,3,1,1,1,1,1", help="expansion config for the MAT measurement")
    g.add_argument("--eval-max-new-tokens", type=int, default=32)
    p.set_defaults(func=cmd_boost)


def cmd_boost(args) -> int:
    from specjax.boost.data import DataConfig
    from specjax.boost.run import RunConfig, boost, resolve_ssm_config
    from specjax.boost.train import TrainConfig

    modes = tuple(m.strip() for m in args.data_modes.split(",") if m.strip())
    if not modes or any(m not in ("greedy", "sample") for m in modes):
        raise SystemExit(f"error: --data-modes {args.data_modes!r}: a comma list of greedy, sample")
    if args.num_ssms < 1 or args.steps < 1:
        raise SystemExit("error: --num-ssms and --steps must be >= 1")
    run = RunConfig(
        llm=str(Path(args.llm).resolve()) if args.llm else None,
        prompts=tuple(str(Path(p).resolve()) for p in args.prompts), num_ssms=args.num_ssms,
        ssm_config=resolve_ssm_config(args.ssm_config),
        data=DataConfig(max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens,
                        batch_size=args.gen_batch_size, modes=modes, temperature=args.temperature,
                        chat=not args.no_chat, seed=args.seed),
        train=TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                          weight_decay=args.weight_decay, freeze_embed=args.freeze_embed, seed=args.seed,
                          checkpoint_every=args.checkpoint_every, log_every=args.log_every),
        init=args.init, boost_mode=args.boost_mode, covered_weight=args.covered_weight, max_prompts=args.max_prompts,
        eval_prompts=args.eval_prompts, tree=tuple(int(k) for k in args.eval_tree.split(",")),
        eval_max_new_tokens=args.eval_max_new_tokens)
    ssm_source = None if args.ssm_config == run.ssm_config else args.ssm_config
    boost(run, args.out, resume=args.resume, ssm_source=ssm_source, data_dir=args.data_from)
    return 0


def _add_bench(sub):
    p = sub.add_parser("bench", help="Spec-Bench: speculative vs incremental decoding vs transformers")
    p.add_argument("--llm", help="the LLM (default: the embedded SmolLM2-135M-Instruct and its drafters)")
    p.add_argument("--ssm", action="append", default=[], metavar="DIR", help="an SSM (repeat for an ensemble)")
    p.add_argument("--tree", default=None, help="expansion config k1,...,km (default: the generator's)")
    p.add_argument("--questions", default=None,
                   help="Spec-Bench question file (jsonl: question_id, category, turns); default: "
                        "../shared/data/eval/spec_bench_questions.jsonl when it exists")
    p.add_argument("--per-category", type=int, default=None, help="first N questions of each category")
    p.add_argument("--categories", default="", help="comma list of categories (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.7, help="the stochastic comparison (0: skip it)")
    p.add_argument("--batch-sizes", default="1,4,8", help="batch mode sizes ('' to skip)")
    p.add_argument("--batch-prompts", type=int, default=8, help="prompts per batch-mode measurement")
    p.add_argument("--chain-ssm", type=int, default=0, help="the SSM for the chain and as HF assistant")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baselines (no torch needed)")
    p.add_argument("--budget", type=int, default=16, help="node budget of the merged drafters' row (spec-merged-bN)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 question per category, 3 categories, 16 new tokens, B=1,2")
    p.add_argument("--out", default="bench_out", help="output directory (specbench.json, .md, .png)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from specjax import api
    from specjax.bench.run import BenchConfig, BenchError, bench, load_questions

    questions = args.questions
    if questions is None:
        dev = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "eval" / "spec_bench_questions.jsonl"
        if not dev.is_file():
            raise SystemExit("error: give --questions FILE (a Spec-Bench question.jsonl)")
        questions = str(dev)
    try:
        sizes = tuple(int(b) for b in args.batch_sizes.split(",") if b.strip())
    except ValueError:
        raise SystemExit(f"error: --batch-sizes {args.batch_sizes!r}: a comma list of integers")
    if any(b < 1 for b in sizes) or args.max_new_tokens < 1 or (args.per_category is not None and args.per_category < 1) \
            or args.budget < 1:
        raise SystemExit("error: --batch-sizes, --max-new-tokens, --per-category and --budget must be >= 1")
    cats = tuple(c.strip() for c in args.categories.split(",") if c.strip())
    cfg = BenchConfig(questions=questions, per_category=args.per_category, categories=cats,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature, hf=not args.no_hf,
                      batch_sizes=sizes, batch_prompts=args.batch_prompts, chain_ssm=args.chain_ssm,
                      seed=args.seed, budget=args.budget)
    if args.quick:
        cfg = dataclasses.replace(cfg, per_category=1, max_new_tokens=min(cfg.max_new_tokens, 16),
                                  batch_sizes=(1, 2), batch_prompts=2)
    try:
        import matplotlib  # noqa: F401  (the plot is written at the end: fail before the long run)
    except ImportError:
        raise SystemExit("error: specjax bench writes a plot: pip install matplotlib (or specjax[plot])")
    tree, ssms = args.tree, list(args.ssm)
    if args.llm is None and not ssms:  # the shipped drafters at their tuned shape for spec-tree
        from specjax import default_model

        shipped = default_model.default_tree()
        dirs = [str(p) for p in default_model.default_ssm_dirs()]
        if shipped is not None and dirs:
            ssms = dirs[: shipped["num_ssms"]]
            tree = tree or ",".join(map(str, shipped["expansion"]))
    gen = api.Generator.load(llm=args.llm, ssms=ssms, tree=tree or "1,1,3,1,1,1,1,1", drafters="ssm",
                             mode="spec" if ssms else None)
    if not gen.ssms:
        raise BenchError("no SSMs: give --ssm DIR" + (" (drafters ship only for the embedded LLM)" if args.llm
                                                      else " (the embedded LLM's drafters are not installed)"))
    if args.quick and not cats:  # the file's first three categories
        names = list(dict.fromkeys(q["category"] for q in load_questions(cfg.questions)))
        cfg = dataclasses.replace(cfg, categories=tuple(names[:3]))
    ssm_paths = list(args.ssm)
    if not ssm_paths and args.llm is None:
        from specjax import default_model

        ssm_paths = [str(p) for p in default_model.default_ssm_dirs()][: len(gen.ssms)]
    print(f"bench: {gen.describe()}", file=sys.stderr)
    bench(gen.llm, gen.ssms, gen.tree, cfg, args.out, llm_path=args.llm, ssm_paths=ssm_paths)
    print(f"wrote {Path(args.out) / 'specbench.json'}, specbench.md, specbench.png", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="specjax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_boost(sub)
    _add_bench(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # our error classes subclass ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

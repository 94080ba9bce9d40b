"""`specjax generate ...`: the command-line front end."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from specjax import validate
from specjax.validate import HelpFormatter, UsageError, float_in, nonneg_int, positive_int


def _add_generate(sub):
    p = sub.add_parser("generate", help="generate text with an LLM, speculatively or incrementally",
                       formatter_class=HelpFormatter)
    p.add_argument("--llm", help="specjax checkpoint dir, HF model dir or .gguf (default: the embedded "
                                 "SmolLM2-135M-Instruct)")
    p.add_argument("--mode", choices=["incremental", "spec"], default=None,
                   help="decoding mode (default: spec when drafters are available, else incremental)")
    p.add_argument("--ssm", action="append", default=[], metavar="DIR",
                   help="a speculative model (repeat for an ensemble; default: the embedded LLM's drafters)")
    p.add_argument("--tree", type=tree_or_auto, default="auto",
                   help="'auto' (default): drafters and budget chosen for this machine from measured costs "
                        "(cached) and the drafters' acceptance (it may choose incremental decoding); or the SSMs' "
                        "expansion k1,...,km (every proposed node is verified unless --budget is given)")
    p.add_argument("--node-budget", type=positive_int, default=64, help="max tree nodes per step over all SSMs")
    p.add_argument("--drafters", default=None,
                   help="comma list of ssm, feature, recycle, lookup (default: every one that applies)")
    p.add_argument("--feature-ssm", default=None, metavar="DIR",
                   help="a feature SSM (EAGLE-style, drafts from the LLM's features) for drafter 'feature' "
                        "(default: the embedded LLM's, when installed)")
    p.add_argument("--budget", type=positive_int, default=None,
                   help="verify the N best proposed nodes per step (by calibrated path score)")
    p.add_argument("--recycle-table", default=None, help="start token recycling from this saved table")
    p.add_argument("--save-recycle-table", default=None, help="save the recycling table here at the end")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompts", help='jsonl file: {"prompt": str} or {"prompt_ids": [int, ...]} per line')
    p.add_argument("--chat", action="store_true", help="wrap text prompts in the model's chat template")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens generated per prompt at most")
    p.add_argument("--max-len", type=positive_int, default=None,
                   help="cache slots per request (default: sized from the prompts, up to the model's context)")
    p.add_argument("--temperature", type=float_in(0.0), default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=None,
                   help="sampling only: keep the most likely tokens up to this probability mass (default: 1, off)")
    p.add_argument("--top-k", type=nonneg_int, default=None,
                   help="sampling only: keep the k most likely tokens (default: 0, off)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed of sampling (prompt i draws from its own key: (seed, i))")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts decoded together (rows of the batch)")
    p.add_argument("--batching", choices=["continuous", "static"], default=None,
                   help="continuous: a row takes the next prompt as soon as its request finishes (default on "
                        "one device); static: batches of --batch-size prompts, each until its last row stops "
                        "(default with --mesh)")
    p.add_argument("--row-tiers", action=argparse.BooleanOptionalAction, default=False,
                   help="continuous batching: run at the smallest of 1, 2, 4, .. --batch-size rows that holds the "
                        "active requests (the queue's tail decodes fewer rows; one more loop compile per tier)")
    p.add_argument("--stream", action="store_true",
                   help="with --prompt: print the text as it is generated")
    p.add_argument("--output", help="write one json line per prompt here, as each finishes (default: print the text)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    out.add_argument("--resume", action="store_true",
                     help="continue an existing --output file: skip the prompts it answers, append the rest")
    p.add_argument("--mesh", default=None, help="run over a device mesh: 'dp=2,tp=4' (dp splits the batch, "
                                                "tp the LLM), 'tp=8', or 'auto' (every device on tp); "
                                                "default: one device")
    p.add_argument("--weight-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="on CPU, the weights the skinny-matmul kernel reads: bfloat16 halves the bytes per "
                        "step (activations stay float32; greedy output may differ slightly from float32)")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host: jax.distributed.initialize first, from $SPECJAX_COORDINATOR, "
                        "$SPECJAX_NUM_PROCESSES, $SPECJAX_PROCESS_ID or the detected cluster (TPU pod, SLURM); "
                        "run the same command in every process, process 0 writes the output")
    p.set_defaults(func=cmd_generate)


def read_prompts(path: str) -> list[dict]:
    """Reads a prompts jsonl file (see specjax.validate.read_prompts)."""
    return validate.read_prompts(path)


def _where(args, row: dict) -> str:
    return f"{args.prompts}:{row['_line']}" if "_line" in row else "--prompt"


def check_rows(gen, args, rows: list[dict], ids: list[list[int]]) -> None:
    """Every prompt fits the vocabulary and the model's context, before any generation."""
    vocab = gen.llm.cfg.vocab_size
    longest = gen.engine.max_prompt_tokens(gen.mode == "spec")
    for row, p in zip(rows, ids):
        if not p:
            raise UsageError(f"{_where(args, row)}: the prompt is empty (no tokens)")
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise UsageError(f"{_where(args, row)}: token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        if longest is not None and len(p) > longest[0]:
            raise UsageError(f"{_where(args, row)}: a prompt of {len(p)} tokens does not fit {longest[1]} "
                             f"(at most {longest[0]} prompt tokens): shorten it")


def cmd_generate(args) -> int:
    from specjax import api
    from specjax.interrupt import Interrupted, stop_on_sigint
    from specjax.output import ResultFile, check_output_path, read_rows
    from specjax.sampling import SamplingConfig

    if args.prompt is None and args.prompts is None:
        raise UsageError("give --prompt TEXT or --prompts FILE.jsonl")
    if (args.overwrite or args.resume) and not args.output:
        raise UsageError(f"{'--overwrite' if args.overwrite else '--resume'} needs --output FILE")
    validate.check_sampling_flags(args.temperature, args.top_p, args.top_k)
    if args.stream and (args.prompt is None or args.output):
        raise UsageError("--stream prints one --prompt's text as it comes: give --prompt TEXT and no --output")
    rows = [{"prompt": args.prompt}] if args.prompt is not None else read_prompts(args.prompts)
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k or 0,
                              top_p=1.0 if args.top_p is None else args.top_p)
    inputs = [p for p in [args.prompts, args.llm, *args.ssm, args.feature_ssm] if p]
    if args.output:  # checked before any model loads
        check_output_path(args.output, inputs, overwrite=args.overwrite, resume=args.resume)
    if args.distributed:
        from specjax.sharding import init_distributed

        init_distributed()
    import jax

    is_writer = not args.distributed or jax.process_index() == 0  # every process holds the same outputs
    writer = None
    if args.output and is_writer:
        writer = ResultFile.open(args.output, inputs, overwrite=args.overwrite, resume=args.resume)
    try:
        done = writer.rows if writer else (read_rows(Path(args.output))[0] if args.resume and args.output else [])
        todo = _resume_plan(args, rows, done)
        t_load = time.perf_counter()
        gen = api.Generator.load(llm=args.llm, ssms=args.ssm, tree=args.tree, node_budget=args.node_budget,
                                 max_len=args.max_len, mode=args.mode, mesh=args.mesh, drafters=args.drafters,
                                 budget=args.budget, recycle_table=args.recycle_table,
                                 log=lambda m: print(m, file=sys.stderr),
                                 weight_dtype=None if args.weight_dtype == "float32" else args.weight_dtype,
                                 feature_ssm=args.feature_ssm, temperature=args.temperature)
        print(f"loaded {gen.describe()} in {time.perf_counter() - t_load:.1f}s", file=sys.stderr)
        if gen.choice is not None:
            print(f"auto: {gen.choice.reason}", file=sys.stderr)
        gen.engine.progress = lambda line: print(line, file=sys.stderr, flush=True)
        ids = [gen.encode_row(rows[i], args.chat) for i in todo]
        check_rows(gen, args, [rows[i] for i in todo], ids)
        if writer is not None and len(todo) < len(rows):
            print(f"resume: {len(rows) - len(todo)} of {len(rows)} prompts already in {args.output}", file=sys.stderr)
        outs = []

        def emit(out: dict) -> None:
            out = {**out, "index": todo[out["index"]], "prompt": rows[todo[out["index"]]].get("prompt")}
            outs.append(out)
            if not is_writer:
                return
            if writer is not None:
                writer.write(out)
            else:
                print(out["text"] if out["text"] is not None else out["token_ids"])
                print("-" * 40, flush=True)

        if args.stream:
            return _stream(gen, ids[0], args, sampling)
        with stop_on_sigint() as stop:
            try:
                gen.generate_ids(ids, max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed,
                                 batch_size=args.batch_size, should_stop=stop.is_set, batching=args.batching,
                                 row_tiers=args.row_tiers,
                                 on_result=lambda i, r: emit(gen.row_output(i, {}, r, args.batch_size)))
            except Interrupted:
                where = f" to {args.output} (--resume continues)" if writer is not None else ""
                print(f"interrupted: {len(outs)} of {len(todo)} prompts finished{where}", file=sys.stderr)
                return 130
    finally:
        if writer is not None:
            writer.close(sort_key="index" if len(writer.rows) >= len(rows) else None)
    _summary(gen, outs)
    if args.save_recycle_table:
        table = gen.engine.persistent.get("recycle_table")
        if table is None:
            raise UsageError("--save-recycle-table: token recycling did not run (drafter 'recycle' unused)")
        from specjax.drafters import recycle

        recycle.save(args.save_recycle_table, table, gen.llm)
    return 0


def _stream(gen, ids: list[int], args, sampling) -> int:
    """--stream: the text of one prompt printed piece by piece as the loop commits it."""
    t0 = time.perf_counter()
    text = gen.llm.tokenizer is not None
    for piece in gen.stream(ids, max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed, text=text):
        print(piece if text else " ".join(map(str, piece)), end="" if text else " ", flush=True)
    print(flush=True)
    r = gen.last_result
    print(f"mode={gen.mode} new_tokens={len(r.token_ids)} llm_steps={r.llm_steps} MAT={r.mean_accepted:.2f} "
          f"finish={r.finish_reason} seconds={time.perf_counter() - t0:.1f}", file=sys.stderr)
    return 0


def _resume_plan(args, rows: list[dict], done: list[dict]) -> list[int]:
    """Indices of the rows still to answer; the answered ones must be these prompts' answers."""
    answered = set()
    for k, out in enumerate(done, 1):
        i = out.get("index")
        if not isinstance(i, int) or not 0 <= i < len(rows):
            raise UsageError(f"--resume: {args.output}:{k} is not an answer to one of these {len(rows)} prompts")
        row = rows[i]
        same = (out.get("prompt") == row["prompt"]) if "prompt" in row else (out.get("prompt_ids") == row["prompt_ids"])
        if not same:
            raise UsageError(f"--resume: {args.output}:{k} answers another prompt than {_where(args, row)}: "
                             "resume with the prompts file it was made from")
        answered.add(i)
    return [i for i in range(len(rows)) if i not in answered]


def _summary(gen, outs: list[dict]) -> None:
    total_tokens = sum(len(o["token_ids"]) for o in outs)
    total_steps = sum(o["llm_steps"] for o in outs)
    batch_seconds: dict[int, float] = {}
    for o in outs:  # a batch's time is its last request's
        batch_seconds[o["batch"]] = max(batch_seconds.get(o["batch"], 0.0), o["seconds"])
    total_seconds = sum(batch_seconds.values())
    mat = total_tokens / max(total_steps, 1)
    by = {}
    for out in outs:
        for name, n in out.get("drafter_tokens", {}).items():
            by[name] = by.get(name, 0) + n
    per = (" accepted_by=" + ",".join(f"{k}:{v}" for k, v in by.items())) if by else ""
    print(f"mode={gen.last_mode} prompts={len(outs)} new_tokens={total_tokens} llm_steps={total_steps} "
          f"MAT={mat:.2f}{per} tokens/s={total_tokens / max(total_seconds, 1e-9):.1f} "
          f"compile_s={gen.engine.compile_seconds:.1f} (not in tokens/s)", file=sys.stderr)


def _add_serve(sub):
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (continuous batching, streaming)",
                       formatter_class=HelpFormatter)
    p.add_argument("--llm", help="specjax checkpoint dir, HF model dir or .gguf (default: the embedded "
                                 "SmolLM2-135M-Instruct)")
    p.add_argument("--ssm", action="append", default=[], metavar="DIR", help="a speculative model (repeat for several)")
    p.add_argument("--mode", choices=["incremental", "spec"], default=None, help="as for generate")
    p.add_argument("--tree", type=tree_or_auto, default="auto", help="as for generate")
    p.add_argument("--node-budget", type=positive_int, default=64, help="max tree nodes per step over all SSMs")
    p.add_argument("--drafters", default=None, help="comma list of ssm, feature, recycle, lookup (as for generate)")
    p.add_argument("--feature-ssm", default=None, metavar="DIR", help="a feature SSM (as for generate)")
    p.add_argument("--budget", type=positive_int, default=None, help="verify the N best proposed nodes per step")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=positive_int, default=8000, help="port to listen on")
    p.add_argument("--batch-size", type=positive_int, default=8, help="B: requests decoded together (rows)")
    p.add_argument("--max-len", type=positive_int, default=None,
                   help="S: cache slots per request, prompt + max_tokens + one step (default: 2048, at most "
                        "the model's context)")
    p.add_argument("--steps-per-call", type=positive_int, default=None,
                   help="K: decode steps per return to the host at most (default: about 0.1 s of work)")
    p.add_argument("--row-tiers", action=argparse.BooleanOptionalAction, default=True,
                   help="run the batch at the smallest of 1, 2, 4, .. --batch-size rows that holds the active "
                        "requests (one loop compiled per tier); --no-row-tiers: always --batch-size rows")
    p.add_argument("--precompile", choices=["idle", "startup", "off"], default="idle",
                   help="when every row tier's loop, row insert/release and moves compile, for greedy requests "
                        "and those that name no temperature: idle: listen at once and compile them one at a time "
                        "while no request is active or waiting (a request waits for one compile at most); "
                        "startup: all before listening (minutes on a small CPU; no stream then waits for a "
                        "compile); off: each on first use")
    p.add_argument("--no-precompile", dest="precompile", action="store_const", const="off",
                   help=argparse.SUPPRESS)  # the flag's earlier form: --precompile off
    p.add_argument("--model-name", default=None,
                   help="the model id clients name (default: the --llm directory's name, or specjax-default)")
    p.add_argument("--weight-dtype", choices=["float32", "bfloat16"], default="float32", help="as for generate")
    p.set_defaults(func=cmd_serve)


SERVE_SLOTS = 2048


def cmd_serve(args) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UsageError(f"specjax serve needs the serve extra: pip install 'specjax[serve]' ({e})") from None
    from specjax import api, server

    t0 = time.perf_counter()
    gen = api.Generator.load(llm=args.llm, ssms=args.ssm, tree=args.tree, node_budget=args.node_budget,
                             max_len=args.max_len, mode=args.mode, drafters=args.drafters, budget=args.budget,
                             log=lambda m: print(m, file=sys.stderr),
                             weight_dtype=None if args.weight_dtype == "float32" else args.weight_dtype,
                             feature_ssm=args.feature_ssm)
    print(f"loaded {gen.describe()} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    slots = args.max_len
    if slots is None:
        limit = gen.engine._slot_limit()
        slots = SERVE_SLOTS if limit is None else min(SERVE_SLOTS, limit[0])
    name = args.model_name or (Path(args.llm).name if args.llm else "specjax-default")
    server.serve(gen, args.host, args.port, args.batch_size, slots, name, args.steps_per_call,
                 row_tiers=args.row_tiers, precompile=args.precompile)
    return 0


def _add_boost(sub):
    p = sub.add_parser("boost", help="boost-tune an ensemble of SSMs on the LLM's own continuations",
                       formatter_class=HelpFormatter)
    p.add_argument("--llm", default=None, help="the LLM (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--prompts", nargs="+", required=True, metavar="FILE",
                   help='prompt files: .jsonl with a "prompt", "question" or "instruction" field, or .txt, one per line')
    p.add_argument("--num-ssms", type=positive_int, default=1, help="SSMs in the ensemble (boosting rounds)")
    p.add_argument("--ssm-config", default="tiny", help="preset (micro, tiny, base, small) or a JSON file of "
                                                       "ModelConfig fields overriding 'tiny'")
    p.add_argument("--out", required=True, help="output directory: OUT/ssm_0, OUT/ssm_1, ... and logs")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (same config)")
    p.add_argument("--init", choices=["llm", "random"], default="llm",
                   help="SSM embedding from the LLM's (projected to the SSM's width) or random")
    p.add_argument("--boost-mode", choices=["drop", "positions", "reweight"], default="reweight",
                   help="drop the samples the ensemble covers (the paper's), zero the covered positions' "
                        "weights, or scale them by --covered-weight (what the shipped ensemble uses)")
    p.add_argument("--covered-weight", type=float_in(0.0, 1.0), default=0.25,
                   help="--boost-mode reweight: loss weight of the tokens the ensemble already predicts")
    g = p.add_argument_group("data")
    g.add_argument("--max-prompts", type=positive_int, default=None, help="use the first N prompts (default: all)")
    g.add_argument("--max-prompt-tokens", type=positive_int, default=96, help="keep a prompt's last N tokens")
    g.add_argument("--max-new-tokens", type=positive_int, default=64, help="LLM tokens generated per prompt")
    g.add_argument("--data-modes", type=data_modes, default="greedy", help="comma list of greedy, sample")
    g.add_argument("--temperature", type=float_in(0.0, low_open=True), default=0.8, help="for --data-modes sample")
    g.add_argument("--gen-batch-size", type=positive_int, default=8, help="prompts per LLM generation batch")
    g.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the chat template")
    g.add_argument("--data-from", default=None, metavar="DIR",
                   help="reuse another run's data directory (RUN/data: same LLM, data config and prompts)")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=positive_int, default=1000, help="optimiser steps per SSM")
    g.add_argument("--batch-size", type=positive_int, default=16, help="samples per step")
    g.add_argument("--lr", type=float_in(0.0, low_open=True), default=3e-3, help="peak learning rate (AdamW)")
    g.add_argument("--warmup", type=nonneg_int, default=50, help="linear warmup steps (then cosine decay)")
    g.add_argument("--weight-decay", type=float_in(0.0), default=0.01, help="AdamW weight decay")
    g.add_argument("--freeze-embed", action="store_true", help="do not train the (tied) embedding")
    g.add_argument("--seed", type=nonneg_int, default=0, help="random seed of data sampling, init and batches")
    g.add_argument("--checkpoint-every", type=positive_int, default=200, help="save the training state every N steps")
    g.add_argument("--log-every", type=positive_int, default=25, help="log the loss every N steps")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-prompts", type=nonneg_int, default=8, help="last N prompts held out for evaluation")
    g.add_argument("--eval-tree", type=expansion, default="1,1,3,1,1,1,1,1", help="expansion config for the MAT measurement")
    g.add_argument("--eval-max-new-tokens", type=positive_int, default=32, help="tokens per held-out prompt")
    p.set_defaults(func=cmd_boost)


def data_modes(text: str) -> str:
    """argparse type of boost --data-modes."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in ("greedy", "sample") for m in modes):
        raise argparse.ArgumentTypeError(f"must be a comma list of greedy, sample; got {text!r}")
    return text


def tree_or_auto(text: str) -> str:
    """argparse type of generate's --tree: 'auto' or an expansion config (see `expansion`)."""
    return "auto" if text.strip() == "auto" else expansion(text)


def expansion(text: str) -> str:
    """argparse type of a tree expansion config: checked as TreeConfig.parse would (the SSM count and
    node budget are checked once the models are known)."""
    from specjax.tree import TreeConfig, TreeConfigError

    try:
        TreeConfig.parse(text, node_budget=1 << 30)
    except TreeConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def cmd_boost(args) -> int:
    from specjax.boost.data import DataConfig
    from specjax.boost.run import RunConfig, boost, resolve_ssm_config
    from specjax.boost.train import TrainConfig
    from specjax.tree import TreeConfig

    modes = tuple(m.strip() for m in args.data_modes.split(",") if m.strip())
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
        eval_prompts=args.eval_prompts, tree=TreeConfig.parse(args.eval_tree).expansion,
        eval_max_new_tokens=args.eval_max_new_tokens)
    ssm_source = None if args.ssm_config == run.ssm_config else args.ssm_config
    boost(run, args.out, resume=args.resume, ssm_source=ssm_source, data_dir=args.data_from)
    return 0


def _add_bench(sub):
    p = sub.add_parser("bench", help="Spec-Bench: speculative vs incremental decoding vs transformers",
                       formatter_class=HelpFormatter)
    p.add_argument("--llm", help="the LLM (default: the embedded SmolLM2-135M-Instruct and its drafters)")
    p.add_argument("--ssm", action="append", default=[], metavar="DIR",
                   help="an SSM (repeat for an ensemble; default: the embedded LLM's drafters)")
    p.add_argument("--tree", type=expansion, default=None, help="expansion config k1,...,km (default: the generator's)")
    p.add_argument("--questions", default=None,
                   help="Spec-Bench question file (jsonl: question_id, category, turns); default: "
                        "../shared/data/eval/spec_bench_questions.jsonl when it exists")
    p.add_argument("--per-category", type=positive_int, default=None,
                   help="first N questions of each category (default: all)")
    p.add_argument("--categories", default="", help="comma list of categories (default: all)")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens generated per question at most")
    p.add_argument("--temperature", type=float_in(0.0), default=0.7, help="the stochastic comparison (0: skip it)")
    p.add_argument("--batch-sizes", type=batch_sizes, default="1,4,8", help="batch mode sizes ('' to skip)")
    p.add_argument("--batch-prompts", type=positive_int, default=8, help="prompts per batch-mode measurement")
    p.add_argument("--chain-ssm", type=nonneg_int, default=0, help="the SSM for the chain and as HF assistant")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baselines (no torch needed)")
    p.add_argument("--budget", type=positive_int, default=16, help="node budget of the merged drafters' row (spec-merged-bN)")
    p.add_argument("--feature-ssm", default=None, metavar="DIR",
                   help="a feature SSM: its own row (spec-feature, a chain of 5) and one more merged drafter "
                        "(default: the embedded LLM's shipped one, if installed)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 question per category, 3 categories, 16 new tokens, B=1,2")
    p.add_argument("--out", default="bench_out",
                   help="output directory (records.jsonl as the runs finish; then specbench.json, .md, .png)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue a killed run in --out (same options): skip the runs records.jsonl holds")
    again.add_argument("--overwrite", action="store_true", help="start over, replacing --out's records.jsonl")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (question i uses seed + i)")
    p.set_defaults(func=cmd_bench)


def batch_sizes(text: str) -> tuple[int, ...]:
    """argparse type of bench --batch-sizes: a comma list of integers >= 1 (may be empty)."""
    try:
        sizes = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        sizes = (0,)
    if any(b < 1 for b in sizes):
        raise argparse.ArgumentTypeError(f"must be a comma list of integers >= 1 (or ''), got {text!r}")
    return sizes


def cmd_bench(args) -> int:
    from specjax import api
    from specjax.bench.run import RECORDS, BenchConfig, BenchError, bench, check_run_dir, load_questions
    from specjax.interrupt import Interrupted, stop_on_sigint

    questions = args.questions
    if questions is None:
        dev = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "eval" / "spec_bench_questions.jsonl"
        if not dev.is_file():
            raise UsageError("give --questions FILE (a Spec-Bench question.jsonl)")
        questions = str(dev)
    sizes = args.batch_sizes
    cats = tuple(c.strip() for c in args.categories.split(",") if c.strip())
    cfg = BenchConfig(questions=questions, per_category=args.per_category, categories=cats,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature, hf=not args.no_hf,
                      batch_sizes=sizes, batch_prompts=args.batch_prompts, chain_ssm=args.chain_ssm,
                      seed=args.seed, budget=args.budget)
    if args.quick:
        cfg = dataclasses.replace(cfg, per_category=1, max_new_tokens=min(cfg.max_new_tokens, 16),
                                  batch_sizes=(1, 2), batch_prompts=2)
    check_run_dir(args.out, resume=args.resume, overwrite=args.overwrite)
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
    fdir = args.feature_ssm
    if fdir is None and args.llm is None:
        from specjax import default_model

        shipped = default_model.DEFAULT_SSMS_DIR / "feature"
        fdir = str(shipped) if (shipped / "feature_config.json").is_file() else None
    fs = None
    if fdir is not None:
        from specjax.drafters import feature

        fs = feature.load(fdir, gen.llm)  # (only its config is read) unpacked params: each engine packs its own
    print(f"bench: {gen.describe()}" + (f"; feature SSM {fdir}" if fs is not None else ""), file=sys.stderr)
    with stop_on_sigint() as stop:
        try:
            bench(gen.llm, gen.ssms, gen.tree, cfg, args.out, llm_path=args.llm, ssm_paths=ssm_paths,
                  resume=args.resume, should_stop=stop.is_set, feature_ssm=fs)
        except Interrupted:
            print(f"interrupted: the finished runs are in {Path(args.out) / RECORDS} (--resume continues)",
                  file=sys.stderr)
            return 130
    print(f"wrote {Path(args.out) / 'specbench.json'}, specbench.md"
          + (", specbench.png" if (Path(args.out) / "specbench.png").is_file() else ""), file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Exit status: 0 done, 2 a usage error (bad flag value, input file, model or combination: nothing
    was run), 1 a runtime failure (I/O errors; an unexpected exception, with its traceback), 130 interrupted (SIGINT)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # "PyTorch was not found" is not ours to say
    parser = argparse.ArgumentParser(prog="specjax", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_serve(sub)
    _add_boost(sub)
    _add_bench(sub)
    args = parser.parse_args(argv)
    from specjax import compile_cache

    compile_cache.enable()  # a second run loads what the first compiled ($SPECJAX_COMPILE_CACHE=off: never)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:  # our error classes subclass ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

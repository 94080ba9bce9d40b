"""The recipe for the default feature SSM of the embedded LLM (SmolLM2-135M-Instruct): data, then training.

    python scripts/train_feature_ssm.py data --out runs/feature --prompts 3000     # resumable, logs tokens/s
    python scripts/train_feature_ssm.py train --out runs/feature --steps 3000      # resumable
        [--heldout runs/feature_heldout/data]     # logs held-out agreement every --eval-every steps
    python scripts/train_feature_ssm.py data --out runs/feature_heldout --prompts 128 --held-out
    python scripts/train_feature_ssm.py eval --out runs/feature --data runs/feature_heldout/data
    python scripts/train_feature_ssm.py ship --out runs/feature                    # -> specjax/default_ssms/feature

Prompts: ../shared/data/boost_prompts/ (chat, context tasks, reasoning, GSM8K train, T0), interleaved 4 : 2 : 1 :
1 : 1, chat and context tasks from lines < 5000 only (lines >= 5000 are held out for measuring acceptance);
prompts longer than --max-prompt-tokens are skipped (cutting them would drop their instruction). Never
Spec-Bench (evaluation only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT_DIR = ROOT.parent / "shared" / "data" / "boost_prompts"
HELD_OUT_FROM = 5000
SOURCES = (("chat_prompts.jsonl", 4), ("context_tasks.jsonl", 2), ("reasoning_prompts.jsonl", 1),
           ("gsm8k_train.jsonl", 1), ("t0_prompts_sample.jsonl", 1))
TAPS = (2, 15, 27)  # low, middle, high layer of the 30 (EAGLE-3's choice: 2, L/2, L-3)


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def reference_pairs(tokenizer, count: int, max_prompt_tokens: int, skip: int) -> tuple[list, list]:
    """(prompt ids, response ids + end of turn) of rows with a reference `response`, training lines only,
    interleaved as prompt_ids does, after the first `skip` rows (those the generated set used)."""
    import json as _json

    from specjax.feature import data

    groups = []
    for i, (name, _) in enumerate(SOURCES):
        rows = []
        for n, line in enumerate(open(PROMPT_DIR / name, encoding="utf-8")):
            if i < 2 and n >= HELD_OUT_FROM:
                break
            row = _json.loads(line)
            if isinstance(row.get("response"), str) and row["response"].strip():
                rows.append((data.check_row(row, f"{name}:{n + 1}"), row["response"]))
        groups.append(rows)
    pairs = data.interleave(groups, [w for _, w in SOURCES])[skip:]
    end = tokenizer.hf("<|im_end|>", add_special_tokens=False)["input_ids"]
    prompts, responses = [], []
    for row, resp in pairs:
        ids = data.encode_row(tokenizer, row)
        if len(ids) <= max_prompt_tokens:
            prompts.append(ids)
            responses.append(list(tokenizer.hf(resp, add_special_tokens=False)["input_ids"]) + end)
        if len(prompts) == count:
            break
    return prompts, responses


def prompt_ids(tokenizer, count: int, max_prompt_tokens: int, held_out: bool = False) -> list[list[int]]:
    """Training prompts (chat and context lines < 5000, every line of the others), or held-out ones
    (chat and context lines >= 5000 only)."""
    from specjax.feature import data

    if held_out:
        groups = [data.read_rows(PROMPT_DIR / name, HELD_OUT_FROM) for name, _ in SOURCES[:2]]
        weights = [w for _, w in SOURCES[:2]]
    else:
        groups = [data.read_rows(PROMPT_DIR / name, 0, HELD_OUT_FROM if i < 2 else None)
                  for i, (name, _) in enumerate(SOURCES)]
        weights = [w for _, w in SOURCES]
    rows = data.interleave(groups, weights)
    out = []
    for row in rows:
        ids = data.encode_row(tokenizer, row)
        if len(ids) <= max_prompt_tokens:
            out.append(ids)
        if len(out) == count:
            break
    return out


def cmd_data(args) -> int:
    from specjax import api
    from specjax.feature import data

    llm = api.load(None)
    cfg = data.FeatureDataConfig(taps=TAPS, max_prompt_tokens=args.max_prompt_tokens,
                                 max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    if args.teacher_forced:
        ids, responses = reference_pairs(llm.tokenizer, args.prompts, cfg.max_prompt_tokens, skip=args.skip)
        log(f"{len(ids)} prompts with reference answers (teacher-forced), chunks of {cfg.batch_size}, taps {TAPS}")
        data.build(llm, ids, args.out + "/data_tf", cfg, progress=not args.no_progress, log=log, responses=responses)
        return 0
    ids = prompt_ids(llm.tokenizer, args.prompts, cfg.max_prompt_tokens, args.held_out)
    log(f"{len(ids)} prompts, chunks of {cfg.batch_size}, taps {TAPS}")
    data.build(llm, ids, args.out + "/data", cfg, progress=not args.no_progress, log=log)
    return 0


def cmd_train(args) -> int:
    if args.heldout and (args.eval_every < 1 or args.eval_every % args.checkpoint_every):
        print(f"error: --eval-every {args.eval_every} must be a positive multiple of --checkpoint-every "
              f"{args.checkpoint_every} (held-out agreement is measured at checkpoints)", file=sys.stderr)
        return 2
    import jax
    import numpy as np

    from specjax import api
    from specjax.feature import data as fdata
    from specjax.feature import model as fm
    from specjax.feature import train as ftrain

    llm = api.load(None)
    out = Path(args.out)
    dirs = [out / "data"] + ([out / "data_tf"] if (out / "data_tf" / "meta.json").is_file() else [])
    load = lambda: fdata.load_many(dirs, llm.cfg, TAPS)
    data = load()
    d2t_path = out / "d2t.npy"
    init = None
    if args.init:  # warm start: the architecture and draft vocabulary are the checkpoint's
        init, cfg, d2t = fm.load(args.init, llm.cfg, fdata.llm_fingerprint(llm.cfg))
        if d2t_path.is_file() and not np.array_equal(np.load(d2t_path), d2t):
            print(f"error: {d2t_path} holds another draft vocabulary than {args.init}", file=sys.stderr)
            return 2
        out.mkdir(parents=True, exist_ok=True)
        np.save(d2t_path, d2t)
        log(f"warm start from {args.init}: {cfg.draft_vocab}-token draft vocabulary, {cfg.layer.num_layers} layer(s)")
    elif d2t_path.is_file():
        d2t = np.load(d2t_path)
    else:
        _, refs = reference_pairs(llm.tokenizer, 20000, 1 << 20, skip=0)  # reference answers: counts, no LLM pass
        extra = np.bincount(np.concatenate([np.asarray(r, np.int64) for r in refs]), minlength=llm.cfg.vocab_size)
        d2t, coverage = ftrain.choose_vocab(data, args.draft_vocab, llm.cfg.eos_token_ids, llm.cfg.vocab_size,
                                            extra_counts=extra)
        np.save(d2t_path, d2t)
        log(f"draft vocabulary: {len(d2t)} tokens cover {coverage:.3f} of the {int(data.mask.sum())} generated tokens")
    embed = np.asarray(llm.params["embed"])
    if init is None:
        cfg = fm.make_config(llm.cfg, TAPS, len(d2t), num_layers=args.layers, intermediate=args.intermediate,
                             fingerprint=fdata.llm_fingerprint(llm.cfg))
        params = fm.init_params(cfg, jax.random.PRNGKey(args.seed), embed, d2t)
    else:
        params = init
    tcfg = ftrain.TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, passes=args.passes,
                              seed=args.seed, checkpoint_every=args.checkpoint_every,
                              **({} if args.feature_weight is None else {"feature_weight": args.feature_weight}))
    log(f"{len(data)} samples; {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f}M parameters; {tcfg}")
    held = fdata.load(args.heldout, llm.cfg, TAPS) if args.heldout else None

    def export(p, step):
        fm.save(out / "feature_ssm", p, cfg, d2t)
        if held is not None and step % args.eval_every == 0:  # the held-out curve: is more training still paying?
            m = ftrain.evaluate(p, cfg, embed, held, d2t, ftrain.TrainConfig(passes=args.passes))
            log(f"step {step} held-out top-1 " + " / ".join(f"{m[f'agree{s}']:.4f}" for s in range(1, args.passes + 1))
                + " top-3 " + " / ".join(f"{m[f'top3_{s}']:.4f}" for s in range(1, args.passes + 1)))
    ftrain.train(params, cfg, embed, data, d2t, tcfg, state_dir=out / "train", resume=True, log=log,
                 reload=load if args.follow_data else None, on_checkpoint=export)
    log(f"done: {out / 'feature_ssm'}")
    return 0


def cmd_eval(args) -> int:
    import json

    import numpy as np

    from specjax import api
    from specjax.feature import data as fdata
    from specjax.feature import model as fm
    from specjax.feature import train as ftrain

    llm = api.load(None)
    params, cfg, d2t = fm.load(args.ssm or Path(args.out) / "feature_ssm", llm.cfg, fdata.llm_fingerprint(llm.cfg))
    data = fdata.load(args.data, llm.cfg, cfg.taps)
    tcfg = ftrain.TrainConfig(passes=args.passes)
    m = ftrain.evaluate(params, cfg, np.asarray(llm.params["embed"]), data, d2t, tcfg)
    rows = [{"depth": s, "top1": round(m[f"agree{s}"], 4), "top3": round(m[f"top3_{s}"], 4)} for s in range(1, args.passes + 1)]
    log(f"held-out agreement with the LLM's token ({len(data)} samples of {args.data}): {json.dumps(rows)}")
    return 0


def cmd_ship(args) -> int:
    import shutil

    src, dst = Path(args.out) / "feature_ssm", ROOT / "specjax" / "default_ssms" / "feature"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    log(f"shipped {src} -> {dst}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--out", required=True)
    d.add_argument("--prompts", type=int, default=3000)
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--max-prompt-tokens", type=int, default=256)
    d.add_argument("--max-new-tokens", type=int, default=128)
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--held-out", action="store_true", help="prompts never trained on (for `eval`)")
    d.add_argument("--teacher-forced", action="store_true",
                   help="reference answers read by the LLM instead of its own continuations (OUT/data_tf)")
    d.add_argument("--skip", type=int, default=0, help="with --teacher-forced: skip the first rows with answers")
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--passes", type=int, default=3)
    t.add_argument("--layers", type=int, default=1)
    t.add_argument("--intermediate", type=int, default=768)
    t.add_argument("--draft-vocab", type=int, default=4096)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--feature-weight", type=float, default=None,
                   help="weight of the feature regression loss (EAGLE-1), relative squared error; 0: off "
                        "(default: TrainConfig's, 1.0)")
    t.add_argument("--checkpoint-every", type=int, default=50)
    t.add_argument("--init", default=None,
                   help="warm start from this feature SSM checkpoint (its architecture and draft vocabulary; "
                        "--layers/--intermediate/--draft-vocab are then not used)")
    t.add_argument("--heldout", default=None,
                   help="a feature data directory never trained on (data --held-out): its agreement is logged "
                        "every --eval-every steps, at a checkpoint")
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--follow-data", action="store_true",
                   help="re-read the data directory at every checkpoint (while `data` still runs)")
    e = sub.add_parser("eval")
    e.add_argument("--out", required=True)
    e.add_argument("--ssm", default=None, help="a feature SSM checkpoint (default: OUT/feature_ssm)")
    e.add_argument("--data", required=True, help="a feature data directory (e.g. made with data --held-out)")
    e.add_argument("--passes", type=int, default=4)
    s = sub.add_parser("ship")
    s.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from specjax.feature.data import FeatureDataError
    from specjax.feature.model import FeatureSSMError

    try:
        return {"data": cmd_data, "train": cmd_train, "eval": cmd_eval, "ship": cmd_ship}[args.cmd](args)
    except (FeatureDataError, FeatureSSMError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

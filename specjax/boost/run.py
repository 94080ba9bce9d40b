"""The `specjax boost` pipeline over an output directory:

    OUT/boost_run.json        the run's config (a rerun with another config is refused)
    OUT/data/part-*.npz       the LLM's continuations (resumable), OUT/boost_data.npz all of them
    OUT/train/ssm_i/          SSM i's training state (params, AdamW state, step, data seed)
    OUT/ssm_i/                SSM i as a specjax checkpoint with the LLM's tokenizer (written when done)
    OUT/boost_log.jsonl       per round: samples/positions kept; training history
    OUT/eval.json, OUT/boost_eval.png   held-out agreement and MAT (see evaluate.py; the plot needs matplotlib)

Held-out data: the last `eval_prompts` prompts are never trained on.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import numpy as np

from specjax import api, checkpoint
from specjax.boost import BoostError
from specjax.boost.boosting import boost_weights, hits, topk_predictions
from specjax.boost.data import DataConfig, generate_dataset, save_npz
from specjax.boost.evaluate import agreement, measure_mat, plot
from specjax.boost.prompts import read_prompts
from specjax.boost.ssm import init_ssm_params, ssm_config
from specjax.boost.train import TrainConfig, train
from specjax.engine import LoadedModel

RUN_FILE = "boost_run.json"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    llm: str | None  # None: the embedded default LLM
    prompts: tuple[str, ...]
    num_ssms: int
    ssm_config: str  # preset name, or the JSON file's text
    data: DataConfig
    train: TrainConfig
    init: str = "llm"
    boost_mode: str = "drop"
    covered_weight: float = 0.25  # boost_mode "reweight": weight of the positions the ensemble covers
    max_prompts: int | None = None
    eval_prompts: int = 8
    tree: tuple[int, ...] = (1, 1, 3, 1, 1, 1, 1, 1)
    eval_max_new_tokens: int = 32

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists, as read back


def check_out_dir(out: Path, run: RunConfig, resume: bool) -> None:
    """Refuses a directory that holds another run, or this run without --resume."""
    if not out.exists() or not any(out.iterdir()):
        return
    path = out / RUN_FILE
    if not path.is_file():
        raise BoostError(f"output directory {out} is not empty and holds no boost run ({RUN_FILE}): "
                         "choose another --out")
    old = json.loads(path.read_text())
    new = run.to_dict()
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise BoostError(f"output directory {out} holds another boost run (different {', '.join(diff)}): "
                         "choose another --out")
    if not resume:
        raise BoostError(f"output directory {out} already holds this boost run: pass --resume to continue it")


def boost(run: RunConfig, out: str | Path, resume: bool = False, log=None, progress: bool = True,
          ssm_source: str | None = None, data_dir: str | Path | None = None) -> dict:
    """Runs (or resumes) the whole pipeline; returns the evaluation dict. ssm_source: the file
    run.ssm_config's JSON text came from (for error messages). data_dir: where the data chunks live
    (default OUT/data); another run's, made from the same prompts and data config, is reused as is."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    check_out_dir(out, run, resume)
    llm = api.load(run.llm)
    cfg = ssm_config(run.ssm_config, llm.cfg, ssm_source)
    texts = read_prompts(run.prompts, run.max_prompts)
    if llm.tokenizer is None:
        raise BoostError(f"{run.llm}: the LLM has no tokenizer; boost-tuning needs one for text prompts")
    chat = run.data.chat and llm.tokenizer.has_chat_template
    ids = [llm.tokenizer.encode(t, chat=chat) for t in texts]
    if run.eval_prompts >= len(ids):
        raise BoostError(f"--eval-prompts {run.eval_prompts} leaves no training prompt of {len(ids)}")
    if data_dir is not None:
        check_shared_data(Path(data_dir), run)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps(run.to_dict(), indent=2) + "\n")
    log(f"boost: {len(ids)} prompts, SSM {cfg.num_layers} layers d={cfg.hidden_size} V={cfg.vocab_size}, "
        f"{run.num_ssms} SSM(s)")

    ds = generate_dataset(llm, ids, Path(data_dir) if data_dir else out / "data", run.data, progress=progress)
    save_npz(ds, out / "boost_data.npz")
    held = ds.prompt_index >= len(ids) - run.eval_prompts
    tr, ev = ds.select(~held), ds.select(held)
    log(f"data: {len(tr)} training samples, {len(ev)} held out, {int(tr.mask.sum())} LLM tokens to learn")

    ssms: list[LoadedModel] = []
    ssm_hits: list[np.ndarray] = []
    logf = open(out / "boost_log.jsonl", "a")
    for i in range(run.num_ssms):
        weights, stats = boost_weights(tr.mask, ssm_hits, run.boost_mode, run.covered_weight)
        log(f"round {i}: keeps {stats['samples_kept']}/{stats['samples']} samples, "
            f"{stats['positions_kept']}/{stats['positions']} positions, weight {stats['weight']:.0f} ({run.boost_mode})")
        dst = out / f"ssm_{i}"
        tcfg = dataclasses.replace(run.train, seed=run.train.seed + i)
        history: list[dict] = []
        if resume and checkpoint.is_checkpoint(dst):
            params, _ = checkpoint.load_checkpoint(dst)
            log(f"ssm_{i}: done, loaded from {dst}")
        elif stats["samples_kept"] == 0:
            raise BoostError(f"round {i}: the first {i} SSM(s) already cover every training sample: "
                             f"lower --num-ssms or add prompts")
        else:
            init = init_ssm_params(cfg, jax.random.PRNGKey(run.train.seed + 1000 + i), llm.params, run.init)
            params, history = train(init, cfg, tr.tokens, weights, tcfg, state_dir=out / "train" / f"ssm_{i}",
                                    resume=resume, log=lambda s, i=i: log(f"ssm_{i} {s}"), progress=False)
            checkpoint.save_checkpoint(dst, params, cfg, llm.tokenizer)
        logf.write(json.dumps({"round": i, **stats, "history": history}) + "\n")
        logf.flush()
        ssm = LoadedModel(jax.tree.map(jax.numpy.asarray, params), cfg, llm.tokenizer)
        ssms.append(ssm)
        if i + 1 < run.num_ssms:  # the next round's weights; the last SSM's hits would go unused
            ssm_hits.append(hits(tr.tokens, topk_predictions(ssm.params, cfg, tr.tokens, 1)[..., 0]))
    logf.close()

    result = {"agreement": agreement(ssms, ev.tokens, ev.mask), "mat": []}
    if run.eval_prompts:
        eos = tuple(sorted(set(llm.cfg.eos_token_ids) | set(llm.tokenizer.eos_token_ids)))
        held_prompts = [p[-run.data.max_prompt_tokens:] for p in ids[len(ids) - run.eval_prompts:]]
        result["mat"] = measure_mat(llm, ssms, held_prompts, run.tree, run.eval_max_new_tokens,
                                    run.data.batch_size, eos)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")  # before the optional plot
    if result["mat"]:
        try:
            plot(result["mat"], out / "boost_eval.png")
        except ImportError:
            log("note: matplotlib is not installed, so boost_eval.png was not drawn (pip install matplotlib)")
    for i, a in enumerate(result["agreement"]["per_ssm"]):
        log(f"eval ssm_{i}: " + " ".join(f"{k}={v:.3f}" for k, v in a.items()))
    log(f"eval ensemble top1={result['agreement']['ensemble_top1']:.3f}; MAT by #SSMs: "
        + " ".join(f"{r['num_ssms']}:{r['mat']:.2f}" for r in result["mat"]))
    return result


def check_shared_data(data_dir: Path, run: RunConfig) -> None:
    """Another run's data directory (RUN/data) is reused only if that run made it with the same LLM and
    data config from prompts of which this run's are a prefix (chunk i holds the same prompts then)."""
    other = data_dir.parent / RUN_FILE
    if not other.is_file():
        raise BoostError(f"{data_dir}: not the data directory of a boost run ({other} not found)")
    theirs, ours = json.loads(other.read_text()), run.to_dict()
    diff = [k for k in ("llm", "data") if theirs.get(k) != ours.get(k)]
    if diff:
        raise BoostError(f"{data_dir} was made with another {', '.join(diff)}: it cannot be reused by this run")
    mine = read_prompts(run.prompts, run.max_prompts)
    if read_prompts(tuple(theirs["prompts"]), theirs.get("max_prompts"))[: len(mine)] != mine:
        raise BoostError(f"{data_dir} was made from other prompts: it cannot be reused by this run")


def resolve_ssm_config(spec: str) -> str:
    """A preset name as is; a JSON file -> its text (so the run config records the content)."""
    from specjax.boost.ssm import PRESETS

    if spec in PRESETS:
        return spec
    if not Path(spec).is_file():
        raise BoostError(f"--ssm-config {spec!r}: not a preset ({', '.join(PRESETS)}) nor a JSON file")
    return Path(spec).read_text()

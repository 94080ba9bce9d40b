"""`specjax bench`: Spec-Bench for specjax against incremental decoding and transformers, in one process run.

For an LLM and its SSMs (default: the embedded pair), every question's first turn (chat template
applied) is run by every system, systems interleaved per question and their order rotated, so drift on
a shared machine hits all alike:

    greedy       incremental (the baseline) | spec-tree (the tree config, every SSM) |
                 spec-chain (one SSM, a width-1 chain of the tree's depth) |
                 hf-generate | hf-assisted (transformers, assistant = that one SSM exported to HF)
    stochastic   incremental@T (the baseline) | spec-tree@T        (temperature T, seeds per question)
    batch mode   incremental vs spec-tree at each batch size B over the same prompts (throughput)

Outputs in --out: records.jsonl (each run's record as it finishes: a killed run continues with
--resume), specbench.json (config, every record, summaries), specbench.md (tables) and specbench.png
(speedup per category per system, when matplotlib is installed). Arithmetic: report.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from specjax import skinny
from specjax.bench import report
from specjax.bench.systems import HFSystem, HFWorker, SpecjaxSystem
from specjax.engine import Engine, LoadedModel
from specjax.interrupt import Interrupted
from specjax.output import ResultFile
from specjax.sampling import SamplingConfig
from specjax.tree import TreeConfig


class BenchError(ValueError):
    """A benchmark set-up that cannot run (bad question file, bad options)."""


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    questions: str
    per_category: int | None = None  # first N questions of each category; None: all
    categories: tuple[str, ...] = ()  # () = every category in the file
    max_new_tokens: int = 128
    temperature: float = 0.7  # the stochastic comparison; 0 skips it
    hf: bool = True
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    batch_prompts: int = 8  # prompts per batch-mode measurement (a multiple of each B is used)
    chain_ssm: int = 0  # the SSM used for the chain and as transformers' assistant
    seed: int = 0
    drafters: bool = True  # rows for the model-free drafters alone and all drafters merged
    budget: int = 16  # the merged row's node budget


def load_questions(path: str | Path, per_category: int | None = None,
                   categories: Sequence[str] = ()) -> list[dict]:
    """A Spec-Bench question file (jsonl: question_id, category, turns) -> [{"qid", "category",
    "prompt"}] with the first turn of each question; per_category: the first N of each category."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"question file {path} does not exist")
    rows, seen, keys = [], defaultdict(int), set()
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchError(f"{path}:{i} is not valid JSON ({e.msg})") from None
        turns = q.get("turns") if isinstance(q, dict) else None
        if not (isinstance(turns, list) and turns and isinstance(turns[0], str) and "category" in q
                and "question_id" in q):
            raise BenchError(f"{path}:{i}: a Spec-Bench question needs question_id, category and turns "
                             "(a non-empty list of strings)")
        cat = str(q["category"])
        if (cat, q["question_id"]) in keys:
            raise BenchError(f"{path}:{i}: question_id {q['question_id']} appears twice in category {cat}")
        keys.add((cat, q["question_id"]))
        if categories and cat not in categories:
            continue
        if per_category is not None and seen[cat] >= per_category:
            continue
        seen[cat] += 1
        rows.append({"qid": q["question_id"], "category": cat, "prompt": turns[0]})
    if not rows:
        raise BenchError(f"{path}: no questions" + (f" in categories {', '.join(categories)}" if categories else ""))
    missing = [c for c in categories if c not in seen]
    if missing:
        raise BenchError(f"{path}: no questions in categories {', '.join(missing)}")
    return rows


def chain_tree(tree: TreeConfig) -> TreeConfig:
    """A width-1 chain as deep as `tree`, for one SSM."""
    return TreeConfig(expansion=(1,) * tree.depth, num_ssms=1, node_budget=tree.node_budget)


def _eos(llm: LoadedModel) -> tuple[int, ...]:
    ids = set(llm.cfg.eos_token_ids)
    if llm.tokenizer is not None:
        ids |= set(llm.tokenizer.eos_token_ids)
    return tuple(sorted(ids))


def auto_system(llm: LoadedModel, ssms: Sequence[LoadedModel], inc: Engine, sampling: SamplingConfig,
                eos: tuple[int, ...], feature_ssm=None) -> SpecjaxSystem:
    """What `specjax generate` with no tree or budget runs (the automatic choice for this machine, from
    the cached or freshly measured costs): a merged-drafter engine at the chosen budget, watched for
    falling back to incremental decoding (specjax.fallback), or `inc`."""
    from specjax import autotune
    from specjax.drafters.setup import AUTO_SSM_EXPANSION

    tree = TreeConfig(expansion=AUTO_SSM_EXPANSION, num_ssms=len(ssms))
    kinds = ("ssm", "recycle", "lookup") + (("feature",) if feature_ssm is not None else ())
    probe = Engine(llm, ssms, tree, drafters=kinds, feature_ssm=feature_ssm)
    costs, _ = autotune.load_or_measure(probe)
    choice = autotune.choose(costs, probe.drafters)
    print(f"bench: spec-auto runs {choice.reason}", file=sys.stderr)
    if not choice.drafters:
        return SpecjaxSystem("spec-auto", inc, False, sampling, eos)
    from specjax.fallback import FallbackConfig

    names = tuple(d for d in probe.drafters if d.name in choice.drafters)
    engine = Engine(llm, ssms, tree, drafters=names, budget=choice.budget,
                    feature_ssm=feature_ssm if "feature" in choice.drafters else None)
    engine.fallback = FallbackConfig.from_costs(costs)  # as Generator.load sets it
    return SpecjaxSystem("spec-auto", engine, True, sampling, eos)


FEATURE_CHAIN = (1, 1, 1, 1, 1)  # the feature SSM's own row: a chain of 5


def build_systems(llm: LoadedModel, ssms: Sequence[LoadedModel], tree: TreeConfig, cfg: BenchConfig,
                  hf: HFWorker | None, feature_ssm=None) -> tuple[dict, dict]:
    """-> (systems by name, baselines: system -> the system its speedup is against). feature_ssm (a
    loaded drafters.feature.FeatureSSM): adds its own row (a chain of 5) and joins the merged drafters."""
    if not ssms:
        raise BenchError("the benchmark needs at least one SSM (--ssm DIR; the default LLM ships its own)")
    if not 0 <= cfg.chain_ssm < len(ssms):
        raise BenchError(f"--chain-ssm {cfg.chain_ssm}: there are {len(ssms)} SSM(s)")
    eos = _eos(llm)
    greedy = SamplingConfig()
    # Packed for the CPU kernel once here (a no-op where it does not apply), so the engines below share
    # one copy of the weights: each would otherwise pack its own (538 MB for the default LLM; a full
    # bench ran out of memory at ~9 copies).
    llm = dataclasses.replace(llm, params=skinny.pack_params(llm.params, llm.cfg))
    ssms = [dataclasses.replace(m, params=skinny.pack_params(m.params, m.cfg)) for m in ssms]
    if feature_ssm is not None:
        from specjax.drafters import feature

        feature_ssm = feature.pack(feature_ssm)
    inc = Engine(llm)
    spec = Engine(llm, ssms, tree)
    chain = Engine(llm, [ssms[cfg.chain_ssm]], chain_tree(tree))
    systems = {
        "incremental": SpecjaxSystem("incremental", inc, False, greedy, eos),
        "spec-tree": SpecjaxSystem("spec-tree", spec, True, greedy, eos),
        "spec-chain": SpecjaxSystem("spec-chain", chain, True, greedy, eos),
    }
    merged = None
    if cfg.drafters:  # each model-free drafter alone, then every drafter merged under the budget
        for kind in ("recycle", "lookup"):
            systems[f"spec-{kind}"] = SpecjaxSystem(f"spec-{kind}", Engine(llm, drafters=(kind,)), True, greedy, eos)
        from specjax.drafters.setup import AUTO_SSM_EXPANSION

        kinds = ("ssm", "recycle", "lookup")
        if feature_ssm is not None:
            from specjax.drafters import acceptance, feature

            from specjax.drafters.setup import FEATURE_WINDOW

            fcfg = feature.Config(model=feature_ssm.cfg, expansion=FEATURE_CHAIN,
                                  rates=acceptance.rates("feature", "feature"), window=FEATURE_WINDOW)
            systems["spec-feature"] = SpecjaxSystem("spec-feature", Engine(llm, drafters=(fcfg,), feature_ssm=feature_ssm),
                                                    True, greedy, eos)
            kinds += ("feature",)
        merged = Engine(llm, ssms, TreeConfig(expansion=AUTO_SSM_EXPANSION, num_ssms=len(ssms)),
                        drafters=kinds, budget=cfg.budget, feature_ssm=feature_ssm)
        systems[f"spec-merged-b{cfg.budget}"] = SpecjaxSystem(f"spec-merged-b{cfg.budget}", merged, True, greedy, eos)
        systems["spec-auto"] = auto_system(llm, ssms, inc, greedy, eos, feature_ssm)
    if hf is not None:
        systems["hf-generate"] = HFSystem("hf-generate", hf, False, eos)
        systems["hf-assisted"] = HFSystem("hf-assisted", hf, True, eos)
    baselines = {name: "incremental" for name in systems}
    if cfg.temperature > 0:
        t = SamplingConfig(temperature=cfg.temperature)
        base = f"incremental@T{cfg.temperature:g}"
        systems[base] = SpecjaxSystem(base, inc, False, t, eos)
        systems[f"spec-tree@T{cfg.temperature:g}"] = SpecjaxSystem(f"spec-tree@T{cfg.temperature:g}", spec, True, t, eos)
        baselines.update({base: base, f"spec-tree@T{cfg.temperature:g}": base})
        if merged is not None:
            name = f"spec-merged-b{cfg.budget}@T{cfg.temperature:g}"
            systems[name] = SpecjaxSystem(name, merged, True, t, eos)
            baselines[name] = base
    return systems, baselines


def run_questions(systems: dict, questions: list[dict], prompt_ids: list[list[int]], cfg: BenchConfig,
                  progress: bool = True, warmup: bool = True, done: Sequence[dict] = (), emit=None,
                  should_stop=None) -> list[dict]:
    """Every question through every system (B = 1), interleaved; -> records (see report.py).
    done: records of an earlier, interrupted run (their runs are skipped); emit(record) is called as
    each run finishes; should_stop() is polled between runs (True raises Interrupted)."""
    from tqdm import tqdm

    names = list(systems)
    have = {(r["system"], r["category"], r["qid"]): r for r in done}
    todo = [(i, name) for i, q in enumerate(questions) for name in names[i % len(names):] + names[: i % len(names)]
            if (name, q["category"], q["qid"]) not in have]
    if warmup and todo:  # compile / first-call costs for a first bucket, outside the records
        for s in systems.values():
            s.run([prompt_ids[0]], min(cfg.max_new_tokens, 8), cfg.seed)
    records = list(done)
    bar = tqdm(total=len(todo), desc="spec-bench", unit="run", disable=not progress)
    for i, name in todo:
        _check_stop(should_stop)
        q = questions[i]
        [row] = systems[name].run([prompt_ids[i]], cfg.max_new_tokens, cfg.seed + i)
        records.append({"system": name, "category": q["category"], "qid": q["qid"], **row})
        if emit is not None:
            emit(records[-1])
        bar.update(1)
    bar.close()
    return records


def run_batches(systems: dict, prompt_ids: list[list[int]], cfg: BenchConfig, progress: bool = True,
                done: Sequence[dict] = (), emit=None, should_stop=None) -> list[dict]:
    """Throughput at each batch size: incremental vs spec-tree (greedy) over the same prompts. The
    prompts are sorted by length (batches of similar lengths), each batch size runs the same prompts
    (repeated when there are fewer questions than the largest batch). done, emit, should_stop: as
    run_questions (a record's "start" is its batch's first prompt)."""
    from tqdm import tqdm

    names = ["incremental", "spec-tree"]
    need = max(cfg.batch_prompts, max(cfg.batch_sizes))
    prompts = sorted(prompt_ids, key=len)[:need]
    prompts = (prompts * -(-need // len(prompts)))[:need]  # too few questions: repeat them to fill a batch
    have = {(r["system"], r["batch_size"], r["start"]) for r in done}
    jobs = [(b, i, name) for j, (b, i) in enumerate((b, i) for b in cfg.batch_sizes for i in range(0, need - need % b, b))
            for name in (names if j % 2 == 0 else names[::-1]) if (name, b, i) not in have]
    for s in names:  # warm-up: compile each batch size's first shapes
        for b in sorted({b for b, _, _ in jobs}):
            systems[s].run(prompts[:b], min(cfg.max_new_tokens, 8), cfg.seed)
    records = list(done)
    bar = tqdm(total=len(jobs), desc="batch mode", unit="batch", disable=not progress)
    for b, i, name in jobs:
        _check_stop(should_stop)
        rows = systems[name].run(prompts[i: i + b], cfg.max_new_tokens, cfg.seed + i)
        records.append({"system": name, "batch_size": b, "start": i, "new_tokens": sum(r["new_tokens"] for r in rows),
                        "llm_steps": sum(r["llm_steps"] for r in rows), "seconds": max(r["seconds"] for r in rows)})
        if emit is not None:
            emit(records[-1])
        bar.update(1)
    bar.close()
    return records


def _check_stop(should_stop) -> None:
    if should_stop is not None and should_stop():
        raise Interrupted("stopped between benchmark runs")


RECORDS = "records.jsonl"  # in --out: a header line {"header": ...}, then one record per finished run


def check_run_dir(out: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """--out can hold this run (checked before any model loads): a directory (or creatable), and no
    records of an earlier run unless resume (continue it) or overwrite (replace it)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file: give a directory")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise BenchError(f"--out {out}: {parent} is not writable")
    if (out / RECORDS).exists() and not (resume or overwrite):
        raise BenchError(f"--out {out} holds the records of an earlier run ({RECORDS}): pass --resume to "
                         "continue it or --overwrite to start over")
    return out


def _open_records(out: Path, header: dict, resume: bool) -> tuple[ResultFile, list[dict], list[dict]]:
    """records.jsonl opened for appending -> (file, question records, batch records) of an earlier run
    (resume) whose header must equal this run's."""
    f = ResultFile.open(out / RECORDS, overwrite=not resume, resume=resume, flag="--out")
    rows = f.rows
    if rows:
        if rows[0].get("header") != header:
            f.close()
            raise BenchError(f"--resume: {out / RECORDS} was made by a run with other options, models or "
                             "questions: use the same ones, or --overwrite to start over")
        rows = rows[1:]
    else:
        f.write({"header": header})
    return f, [r for r in rows if "qid" in r], [r for r in rows if "batch_size" in r]


def identical_outputs(records: list[dict], a: str, b: str) -> tuple[int, int]:
    """(requests where systems a and b emitted the same tokens, requests both ran)."""
    by = defaultdict(dict)
    for r in records:
        by[r["system"]][(r["category"], r["qid"])] = r["token_ids"]
    keys = set(by[a]) & set(by[b])
    return sum(by[a][k] == by[b][k] for k in keys), len(keys)


def bench(llm: LoadedModel, ssms: Sequence[LoadedModel], tree: TreeConfig, cfg: BenchConfig, out: str | Path,
          llm_path: str | None = None, ssm_paths: Sequence[str] = (), progress: bool = True,
          log=None, resume: bool = False, should_stop=None, feature_ssm=None) -> dict:
    """Runs the whole benchmark and writes OUT/specbench.{json,md,png} (the plot when matplotlib is
    installed); returns the JSON dict. Each finished run is appended to OUT/records.jsonl at once;
    resume continues a killed run from it; should_stop() is polled between runs (True raises
    Interrupted, the records so far kept)."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = check_run_dir(out, resume=resume, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    if llm.tokenizer is None:
        raise BenchError("the LLM has no tokenizer: Spec-Bench prompts are text")
    if not 0 <= cfg.chain_ssm < len(ssms):
        raise BenchError(f"--chain-ssm {cfg.chain_ssm}: there are {len(ssms)} SSM(s) (0..{len(ssms) - 1})")
    questions = load_questions(cfg.questions, cfg.per_category, cfg.categories)
    prompt_ids = [llm.tokenizer.encode(q["prompt"], chat=llm.tokenizer.has_chat_template) for q in questions]
    header = {"config": dataclasses.asdict(cfg), "tree": list(tree.expansion), "num_ssms": len(ssms),
              "llm": llm_path or "default", "ssms": list(ssm_paths), "prompt_ids": prompt_ids}
    header = json.loads(json.dumps(header))  # as read back from the file (tuples -> lists)
    hf = None
    with tempfile.TemporaryDirectory(prefix="specjax-bench-hf-") as export_dir:
        records_file, done_q, done_b = _open_records(out, header, resume)
        try:
            if done_q or done_b:
                log(f"resume: {len(done_q)} question runs and {len(done_b)} batch runs already in {out / RECORDS}")
            if cfg.hf:
                if llm_path is None:
                    from specjax import default_model

                    llm_path = str(default_model.default_llm_dir())
                if not ssm_paths:
                    raise BenchError("the transformers baselines need the SSMs' paths (to export the assistant)")
                hf = HFWorker(llm_path, ssm_paths[cfg.chain_ssm], export_dir)
            systems, baselines = build_systems(llm, ssms, tree, cfg, hf, feature_ssm)
            log(f"spec-bench: {len(questions)} questions, {len(set(q['category'] for q in questions))} categories, "
                f"systems {', '.join(systems)}")
            t0 = time.perf_counter()
            records = run_questions(systems, questions, prompt_ids, cfg, progress, done=done_q,
                                    emit=records_file.write, should_stop=should_stop)
            batch_records = (run_batches(systems, prompt_ids, cfg, progress, done=done_b, emit=records_file.write,
                                         should_stop=should_stop) if cfg.batch_sizes else [])
            wall = time.perf_counter() - t0
        finally:
            records_file.close()
            if hf is not None:
                hf.close()
    summary = report.summarize(records, baselines)
    result = {
        "config": dataclasses.asdict(cfg), "tree": list(tree.expansion), "num_ssms": len(ssms),
        "llm": llm_path or "default", "ssms": list(ssm_paths), "machine": platform.platform(),
        "processor": platform.processor(), "date": time.strftime("%Y-%m-%d"), "wall_seconds": wall,
        "resumed": bool(done_q or done_b),
        "baselines": baselines, "summary": summary, "throughput": report.throughput(batch_records),
        "identical_greedy": {s: identical_outputs(records, s, "incremental")
                             for s in systems if "@" not in s and s != "incremental"},
        "acceptance_by_depth": acceptance_by_depth(records, tree.depth),
        "records": records, "batch_records": batch_records,
    }
    report.write_json(result, out / "specbench.json")
    (out / "specbench.md").write_text(markdown(result) + "\n")
    greedy = [s for s in systems if "@" not in s and s != "incremental"]
    try:
        report.plot(summary, out / "specbench.png", greedy + [s for s in systems if s.startswith("spec-tree@")],
                    "Spec-Bench: speedup over specjax incremental decoding (same sampling)")
    except ImportError:
        log("note: matplotlib is not installed, so specbench.png was not drawn (pip install matplotlib)")
    log(markdown(result))
    return result


def acceptance_by_depth(records: list[dict], depth: int) -> dict:
    """system -> [d-1] = fraction of LLM steps accepting >= d drafted tokens (last step of each request
    left out, as GenerationResult.acceptance_by_depth)."""
    out = {}
    for s in sorted({r["system"] for r in records if r.get("accepted_per_step") and r["system"] != "incremental"
                     and not r["system"].startswith("incremental@")}):
        steps = [n for r in records if r["system"] == s for n in (r["accepted_per_step"][:-1] or r["accepted_per_step"])]
        out[s] = [sum(n - 1 >= d for n in steps) / max(len(steps), 1) for d in range(1, depth + 1)]
    return out


def markdown(result: dict) -> str:
    s = result["summary"]
    greedy = [x for x in s if "@" not in x]
    stoch = [x for x in s if "@" in x]
    parts = [f"Spec-Bench, {result['config']['max_new_tokens']} new tokens, tree {','.join(map(str, result['tree']))} "
             f"with {result['num_ssms']} SSM(s); {result['date']}, {result['processor'] or result['machine']}",
             "", "MAT (tokens per LLM step, bonus included):", "",
             report.markdown_table(s, "mat", [x for x in greedy + stoch if not x.startswith("hf-")]),
             "", "Tokens/s:", "", report.markdown_table(s, "tokens_per_s", greedy + stoch),
             "", "Speedup over specjax incremental decoding (same sampling):", "",
             report.markdown_table(s, "speedup", [x for x in greedy + stoch if not x.startswith("incremental")])]
    table = report.drafter_table(s)
    if table:
        parts += ["", "Accepted tokens by drafter (share of new tokens that drafter had proposed):", "", table]
    same = result.get("identical_greedy") or {}
    if same:
        parts += ["", "Greedy outputs identical to incremental: " +
                  ", ".join(f"{k} {a}/{b}" for k, (a, b) in same.items())]
    tp = result.get("throughput") or []
    if tp:
        cell = {(r["system"], r["batch_size"]): r["tokens_per_s"] for r in tp}
        sizes = sorted({r["batch_size"] for r in tp})
        names = list(dict.fromkeys(r["system"] for r in tp))
        lines = ["| system | " + " | ".join(f"B={b}" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
        for name in names:
            lines.append(f"| {name} tokens/s | " + " | ".join(report._fmt(cell.get((name, b)), ".1f") for b in sizes) + " |")
        if "incremental" in names and "spec-tree" in names:
            ratio = [report._fmt(cell[("spec-tree", b)] / cell[("incremental", b)], ".2f")
                     if cell.get(("spec-tree", b)) and cell.get(("incremental", b)) else "-" for b in sizes]
            lines.append("| spec-tree / incremental | " + " | ".join(ratio) + " |")
        parts += ["", "Batch mode (greedy throughput):", "", *lines]
    return "\n".join(parts)

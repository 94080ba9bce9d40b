"""The Spec-Bench harness (specjax.bench): its arithmetic from known records, `specjax bench --quick` end
to end on tiny models (every system, every output file, figures recomputed from the raw records), and
bad question files refused by name."""

import dataclasses
import json

import pytest

from specjax.bench import report
from specjax.bench.run import BenchError, load_questions
from specjax.cli import main


def rec(system, cat, qid, tokens, steps, seconds):
    return {"system": system, "category": cat, "qid": qid, "new_tokens": tokens, "llm_steps": steps,
            "seconds": seconds}


def test_summary_arithmetic_from_known_records():
    records = [
        rec("inc", "a", 1, 10, 10, 2.0), rec("inc", "a", 2, 30, 30, 4.0), rec("inc", "b", 3, 20, 20, 5.0),
        rec("spec", "a", 1, 10, 4, 1.0), rec("spec", "a", 2, 30, 10, 1.0), rec("spec", "b", 3, 20, 5, 2.0),
        rec("hf", "a", 1, 10, None, 4.0), rec("hf", "b", 3, 20, None, 8.0),  # hf skipped question 2
    ]
    s = report.summarize(records, {"spec": "inc", "hf": "inc"})
    assert s["inc"]["a"]["mat"] == 1.0 and s["inc"]["overall"]["speedup"] == 1.0
    assert s["spec"]["a"]["mat"] == pytest.approx(40 / 14)  # pooled tokens / pooled steps, not a mean of ratios
    assert s["spec"]["overall"]["mat"] == pytest.approx(60 / 19)
    assert s["spec"]["a"]["tokens_per_s"] == pytest.approx(40 / 2.0)
    assert s["spec"]["a"]["speedup"] == pytest.approx((40 / 2.0) / (40 / 6.0))
    assert s["spec"]["b"]["speedup"] == pytest.approx((20 / 2.0) / (20 / 5.0))
    assert s["spec"]["overall"]["speedup"] == pytest.approx((60 / 4.0) / (60 / 11.0))
    assert s["hf"]["a"]["mat"] is None
    # hf's speedup pairs only the questions both ran: (10/4) / (10/2), not against inc's question 2
    assert s["hf"]["a"]["speedup"] == pytest.approx((10 / 4.0) / (10 / 2.0))
    assert s["hf"]["overall"]["speedup"] == pytest.approx((30 / 12.0) / (30 / 7.0))
    table = report.markdown_table(s, "speedup", ["spec", "hf"])
    assert "| **overall** | 2.75 | 0.58 |" in table and table.splitlines()[0] == "| category | spec | hf |"
    [tp] = report.throughput([{"system": "inc", "batch_size": 4, "new_tokens": 40, "seconds": 2.0, "llm_steps": 40},
                              {"system": "inc", "batch_size": 4, "new_tokens": 20, "seconds": 1.0, "llm_steps": 20}])
    assert tp["tokens_per_s"] == pytest.approx(20.0) and tp["mat"] == 1.0 and tp["batch_size"] == 4


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "questions.jsonl"
    rows = [{"question_id": i, "category": c, "turns": [t, "second turn, never used"]}
            for i, (c, t) in enumerate([("writing", "hello world"), ("writing", "world hello"),
                                        ("math", "one two three"), ("qa", "what is it"),
                                        ("coding", "never in quick mode")])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# The spec-auto row's verification and drafter costs, in seconds (verification nearly flat in N, as on a
# machine where the tree is cheap, so the automatic choice is a tree and the row really speculates).
# Injected: measuring them (test_autotune covers that) compiles the LLM at six sizes and each SSM at
# its level widths, which was most of this test's time.
AUTO_COSTS = {"verify": {n: 1e-3 * (1 + 0.01 * (n - 1)) for n in (1, 2, 4, 8, 16, 32)},
              "drafters": {"ssm0": 3e-4, "ssm1": 3e-4, "recycle": 1e-5, "lookup": 1e-5}}


def test_bench_quick_end_to_end(converted, questions, tmp_path, capsys, monkeypatch):
    from specjax import autotune

    probes = []

    def injected(engine, log=None):
        probes.append(engine)
        return AUTO_COSTS, False

    monkeypatch.setattr(autotune, "load_or_measure", injected)
    llm = converted["llama_gqa_llama3"]
    out = tmp_path / "out"
    # --max-new-tokens 8 (quick keeps the lower of it and 16): the runs then have the warm-up's shapes, so
    # each system compiles once, not twice (what --quick alone sets: test_quick_is_a_smoke_config).
    code = main(["bench", "--llm", str(llm), "--ssm", str(llm), "--ssm", str(llm), "--tree", "1,2,1",
                 "--questions", str(questions), "--quick", "--max-new-tokens", "8", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    res = json.loads((out / "specbench.json").read_text())
    assert res["config"]["max_new_tokens"] == 8 and res["config"]["batch_sizes"] == [1, 2]
    assert (out / "specbench.png").stat().st_size > 1000 and "Speedup over" in (out / "specbench.md").read_text()
    systems = {"incremental", "spec-tree", "spec-chain", "hf-generate", "hf-assisted", "incremental@T0.7",
               "spec-tree@T0.7", "spec-recycle", "spec-lookup", "spec-merged-b16", "spec-merged-b16@T0.7", "spec-auto"}
    assert set(res["summary"]) == systems
    # --quick: the first 3 categories, 1 question each, first turn only, at most 8 new tokens (as asked)
    assert {(r["category"], r["qid"]) for r in res["records"]} == {("writing", 0), ("math", 2), ("qa", 3)}
    assert len(res["records"]) == 3 * len(systems)
    assert all(r["new_tokens"] <= 8 for r in res["records"])
    # every figure recomputed from the raw records
    for s in systems:
        rows = [r for r in res["records"] if r["system"] == s]
        tokens, seconds = sum(r["new_tokens"] for r in rows), sum(r["seconds"] for r in rows)
        fig = res["summary"][s]["overall"]
        assert fig["tokens_per_s"] == pytest.approx(tokens / seconds)
        if s.startswith("hf-"):
            assert fig["mat"] is None
        else:
            assert fig["mat"] == pytest.approx(tokens / sum(r["llm_steps"] for r in rows))
        base = res["summary"][res["baselines"][s]]["overall"]["tokens_per_s"]
        assert fig["speedup"] == pytest.approx(fig["tokens_per_s"] / base)
    assert res["summary"]["incremental"]["overall"]["mat"] == 1.0
    # the LLM drafting for itself: greedy speculation is exact and accepts every drafted token
    assert res["identical_greedy"]["spec-tree"] == [3, 3] and res["identical_greedy"]["spec-chain"] == [3, 3]
    assert res["identical_greedy"]["hf-generate"] == [3, 3] and res["identical_greedy"]["hf-assisted"] == [3, 3]
    assert res["acceptance_by_depth"]["spec-chain"] == [1.0, 1.0, 1.0]
    # the automatic choice from the costs for the merged drafters (both SSMs, recycling, lookup), printed
    [probe] = probes
    assert [d.name for d in probe.drafters] == ["ssm0", "ssm1", "recycle", "lookup"]
    choice = autotune.choose(AUTO_COSTS, probe.drafters)
    assert choice.drafters and f"bench: spec-auto runs {choice.reason}" in err
    for s in ("spec-recycle", "spec-lookup", "spec-merged-b16", "spec-auto"):  # every drafter's row is exact too
        assert res["identical_greedy"][s] == [3, 3]
    merged = res["summary"]["spec-merged-b16"]["overall"]["accepted_by"]
    assert set(merged) == {"ssm0", "ssm1", "recycle", "lookup"} and merged["ssm0"] > 0
    assert "Accepted tokens by drafter" in (out / "specbench.md").read_text()
    assert res["summary"]["spec-tree"]["overall"]["mat"] > 2.0
    # batch mode: B=1 and B=2 over the same 2 prompts, both systems
    tp = {(r["system"], r["batch_size"]): r for r in res["throughput"]}
    assert set(tp) == {(s, b) for s in ("incremental", "spec-tree") for b in (1, 2)}
    for b in (1, 2):
        assert tp[("spec-tree", b)]["new_tokens"] == tp[("incremental", b)]["new_tokens"]
    assert "| spec-tree / incremental |" in (out / "specbench.md").read_text()


def test_quick_is_a_smoke_config(converted, questions, tmp_path, monkeypatch):
    """--quick alone: the file's first 3 categories, 1 question each, 16 new tokens (of the default 128),
    batch mode B=1,2 over 2 prompts; the other options as given (what bench() receives, not run here)."""
    from specjax.bench import run

    calls = []
    monkeypatch.setattr(run, "bench", lambda llm, ssms, tree, cfg, out, **kw: calls.append((cfg, tree, kw)) or {})
    llm = str(converted["llama_gqa_llama3"])
    assert main(["bench", "--llm", llm, "--ssm", llm, "--tree", "1,2", "--questions", str(questions), "--quick",
                 "--temperature", "0.5", "--out", str(tmp_path / "out")]) == 0
    [(cfg, tree, kw)] = calls
    assert (cfg.per_category, cfg.categories, cfg.max_new_tokens) == (1, ("writing", "math", "qa"), 16)
    assert (cfg.batch_sizes, cfg.batch_prompts, cfg.temperature, cfg.hf) == ((1, 2), 2, 0.5, True)
    assert tree.expansion == (1, 2) and kw["ssm_paths"] == [llm]
    assert run.load_questions(cfg.questions, cfg.per_category, cfg.categories)[0]["prompt"] == "hello world"
    assert not (tmp_path / "out").exists()  # checked, not created: bench() makes it
    # without --quick: every category and question, 128 new tokens, B=1,4,8 over 8 prompts
    assert main(["bench", "--llm", llm, "--ssm", llm, "--questions", str(questions),
                 "--out", str(tmp_path / "o")]) == 0
    cfg = calls[1][0]
    assert (cfg.per_category, cfg.categories, cfg.max_new_tokens, cfg.batch_sizes, cfg.batch_prompts) == (
        None, (), 128, (1, 4, 8), 8)


def test_bench_records_as_runs_finish_and_resumes(converted, questions, tmp_path, monkeypatch):
    """records.jsonl gets each run as it finishes; a stopped run continues with resume (its records
    kept as they were); another config refuses to resume; no matplotlib: no plot, a note, the json."""
    import sys

    from specjax import api, autotune
    from specjax.bench.run import RECORDS, BenchConfig, bench, check_run_dir
    from specjax.interrupt import Interrupted

    # the spec-auto row's costs injected, as in test_bench_quick_end_to_end (see AUTO_COSTS)
    monkeypatch.setattr(autotune, "load_or_measure", lambda engine, log=None: (AUTO_COSTS, False))
    llm = str(converted["llama_gqa_llama3"])
    gen = api.Generator.load(llm=llm, ssms=[llm], tree="1,2")
    cfg = BenchConfig(questions=str(questions), categories=("writing", "math"), per_category=1, max_new_tokens=6,
                      temperature=0.0, hf=False, batch_sizes=(1,), batch_prompts=2)
    out, polls, logs = tmp_path / "out", [], []
    with pytest.raises(Interrupted):
        bench(gen.llm, gen.ssms, gen.tree, cfg, out, llm_path=llm, progress=False, log=logs.append,
              should_stop=lambda: polls.append(1) or len(polls) > 4)
    lines = [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]
    assert "header" in lines[0] and len(lines) == 1 + 4  # the runs before the stop, each written as it ended
    with pytest.raises(BenchError, match="pass --resume"):
        check_run_dir(out)
    with pytest.raises(BenchError, match="other options"):
        bench(gen.llm, gen.ssms, gen.tree, dataclasses.replace(cfg, max_new_tokens=5), out, llm_path=llm,
              progress=False, log=logs.append, resume=True)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = bench(gen.llm, gen.ssms, gen.tree, cfg, out, llm_path=llm, progress=False, log=logs.append, resume=True)
    assert res["records"][:4] == lines[1:] and res["resumed"]
    systems = {r["system"] for r in res["records"]}
    assert {"incremental", "spec-tree", "spec-chain", "spec-recycle", "spec-lookup"} <= systems
    assert len(res["records"]) == 2 * len(systems) and len(res["batch_records"]) == 2 * 2
    assert res["identical_greedy"]["spec-tree"] == (2, 2)
    assert (out / "specbench.json").is_file() and not (out / "specbench.png").exists()
    assert any("matplotlib is not installed" in line for line in logs)


@pytest.mark.parametrize("content,message", [
    ("", "no questions"),
    ("{oops\n", "questions.jsonl:1 is not valid JSON"),
    ('{"question_id": 1, "category": "x", "turns": []}\n', "questions.jsonl:1: a Spec-Bench question needs"),
])
def test_bad_question_files(tmp_path, content, message):
    path = tmp_path / "questions.jsonl"
    path.write_text(content)
    with pytest.raises(BenchError, match=message):
        load_questions(path)
    path.write_text('{"question_id": 1, "category": "x", "turns": ["a"]}\n' * 2)
    with pytest.raises(BenchError, match="questions.jsonl:2: question_id 1 appears twice"):
        load_questions(path)
    with pytest.raises(BenchError, match="does not exist"):
        load_questions(tmp_path / "missing.jsonl")


def test_questions_per_category_and_unknown_category(questions):
    rows = load_questions(questions, per_category=1)
    assert [(r["category"], r["prompt"]) for r in rows] == [("writing", "hello world"), ("math", "one two three"),
                                                            ("qa", "what is it"), ("coding", "never in quick mode")]
    with pytest.raises(BenchError, match="no questions in categories nope"):
        load_questions(questions, categories=("math", "nope"))


def test_hf_worker_error_names_the_model(tmp_path):
    from specjax.bench.systems import HFWorker, HFWorkerError

    with pytest.raises(HFWorkerError, match="not a specjax checkpoint, a Hugging Face model directory or a .gguf"):
        HFWorker(str(tmp_path / "nothing"), None, tmp_path)

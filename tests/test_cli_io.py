"""`specjax generate` as a user meets it: results written as they finish, the output path checked before
any model loads, --overwrite / --resume, every bad value refused with exit status 2, the context bound,
Ctrl-C (a subprocess), and complete --help."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from specjax import model
from specjax.checkpoint import save_checkpoint
from specjax.cli import main
from specjax.config import ModelConfig
from specjax.engine import Engine
from specjax.api import load

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *argv):
    try:
        code = main(list(map(str, argv)))
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def write_prompts(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def llm(converted):
    return converted["llama_gqa_llama3"]  # RoPE, 128 positions, a tokenizer with a chat template


def test_output_is_checked_before_any_model_loads(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "w5 w6"}])
    (tmp_path / "old.jsonl").write_text("{}\n")
    (tmp_path / "adir").mkdir()
    cases = [(tmp_path / "missing" / "o.jsonl", "directory"), (tmp_path / "adir", "is a directory"),
             (tmp_path / "old.jsonl", "exists: pass --overwrite"), (prompts, "is the input file")]
    for out, message in cases:  # the LLM does not exist: a message about it would mean it was loaded first
        code, _, err = run(capsys, "generate", "--llm", tmp_path / "no-such-llm", "--prompts", prompts,
                           "--output", out)
        assert code == 2 and "--output" in err and message in err, err
    assert (tmp_path / "old.jsonl").read_text() == "{}\n"
    code, _, err = run(capsys, "generate", "--llm", tmp_path / "no-such-llm", "--prompts", prompts,
                       "--output", prompts, "--overwrite")
    assert code == 2 and "is the input file" in err
    assert json.loads(prompts.read_text()) == {"prompt": "w5 w6"}


def test_overwrite_and_resume(llm, tmp_path, capsys):
    rows = [{"prompt": "w5 w6 w7"}, {"prompt_ids": [5, 9, 11]}, {"prompt": "w8"}, {"prompt_ids": [40, 41]}]
    prompts = write_prompts(tmp_path / "p.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = ["generate", "--llm", llm, "--prompts", prompts, "--max-new-tokens", 5, "--batch-size", 2, "--output", out]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    full = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in full] == [0, 1, 2, 3]  # in input order once complete
    code, _, err = run(capsys, *args)
    assert code == 2 and "exists: pass --overwrite" in err
    # a killed run: two rows written, the third torn mid-line; --resume answers the other two only
    lines = out.read_text().splitlines()
    out.write_text(lines[2] + "\n" + lines[0] + "\n" + lines[1][:25])
    code, _, err = run(capsys, *args, "--resume")
    assert code == 0 and "resume: 2 of 4 prompts already" in err and "prompts=2" in err, err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["token_ids"] for r in got] == [r["token_ids"] for r in full]
    assert [r["prompt"] for r in got] == [r["prompt"] for r in full] and [r["index"] for r in got] == [0, 1, 2, 3]
    # resuming with other prompts is refused; --overwrite starts over
    other = write_prompts(tmp_path / "other.jsonl", [{"prompt": "w9"}] * 4)
    code, _, err = run(capsys, *[other if a == prompts else a for a in args], "--resume")
    assert code == 2 and "answers another prompt" in err
    code, _, err = run(capsys, *args, "--overwrite")
    assert code == 0 and len(out.read_text().splitlines()) == 4


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "-1"], "argument --batch-size: must be an integer >= 1, got '-1'"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got '0'"),
    (["--max-new-tokens", "-1"], "argument --max-new-tokens: must be an integer >= 1, got '-1'"),
    (["--temperature", "-0.5"], "argument --temperature: must be a number in [0, inf), got '-0.5'"),
    (["--temperature", "nan"], "argument --temperature: must be a number"),
    (["--top-p", "0"], "argument --top-p: must be a number in (0, 1], got '0'"),
    (["--top-k", "2.5"], "argument --top-k: must be an integer >= 0, got '2.5'"),
    (["--seed", "x"], "argument --seed: must be an integer >= 0"),
    (["--node-budget", "0"], "argument --node-budget: must be an integer >= 1"),
    (["--tree", "1,x"], "argument --tree: bad expansion string '1,x'"),
    (["--top-p", "0.9"], "--top-p 0.9 only apply when sampling, but --temperature is 0"),
    (["--top-k", "5"], "--top-k 5 only apply when sampling"),
    (["--resume"], "--resume needs --output FILE"),
])
def test_bad_values_are_refused_up_front(tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "generate", "--llm", tmp_path / "no-such-llm", "--prompt", "x", *argv)
    assert code == 2 and message in err, err


@pytest.mark.parametrize("row,message", [
    ({"prompt_ids": [5, 6.0]}, '"prompt_ids" must hold integers, got 6.0'),
    ({"prompt_ids": [5, "6"]}, '"prompt_ids" must hold integers, got "6"'),
    ({"prompt_ids": [True]}, '"prompt_ids" must hold integers, got true'),
    ({"prompt_ids": []}, '"prompt_ids" must be a non-empty list'),
    ({"prompt": "x", "prompt_ids": [5]}, 'has both "prompt" and "prompt_ids"'),
    ({"prompt": 5}, '"prompt" must be a string'),
])
def test_prompt_file_errors_name_file_and_line(tmp_path, capsys, row, message):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "fine"}, row])
    code, _, err = run(capsys, "generate", "--llm", tmp_path / "no-such-llm", "--prompts", prompts)
    assert code == 2 and f"p.jsonl:2" in err and message in err, err


def test_context_length_bounds_prompt_and_generation(llm, tmp_path, capsys):
    """A RoPE model's max_position_embeddings (128 here): a longer prompt is an error before any work,
    naming the line; a prompt that fits stops with finish_reason "length" at the limit."""
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt_ids": [5] * 8}, {"prompt_ids": [7] * 130}])
    out = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "generate", "--llm", llm, "--prompts", prompts, "--output", out)
    assert code == 2 and "p.jsonl:2: a prompt of 130 tokens does not fit the LLM's context of 128 positions" in err
    assert out.read_text() == ""  # nothing generated
    eng = Engine(load(str(llm)))
    [r] = eng.generate_incremental([[5] * 100], 100, eos_ids=())
    assert r.finish_reason == "length" and 100 + len(r.token_ids) <= 128


def test_usage_errors_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, "generate", "--llm", tmp_path / "x")
    assert code == 2 and "give --prompt TEXT or --prompts" in err
    code, _, err = run(capsys, "generate", "--prompts", tmp_path / "none.jsonl")
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "bench", "--questions", tmp_path / "q.jsonl", "--batch-sizes", "1,0")
    assert code == 2 and "argument --batch-sizes" in err
    code, _, err = run(capsys, "boost", "--prompts", "p.txt", "--out", tmp_path / "o", "--steps", "0")
    assert code == 2 and "argument --steps: must be an integer >= 1" in err


def test_help_is_complete_with_defaults():
    import argparse

    from specjax import cli

    parser = argparse.ArgumentParser(prog="specjax", formatter_class=cli.HelpFormatter)
    sub = parser.add_subparsers()
    cli._add_generate(sub), cli._add_boost(sub), cli._add_bench(sub)
    for name, p in sub.choices.items():
        for a in p._actions:
            if not a.option_strings or a.dest == "help":
                continue
            assert a.help, f"specjax {name} {a.option_strings[0]} has no help"
            if not (a.default is None or a.default is False):
                entry = p._get_formatter()._format_action(a)  # the option's lines in --help
                assert "default" in entry, f"specjax {name} {a.option_strings[0]}: no default shown"
    assert sub.choices["boost"].get_default("boost_mode") == "reweight"
    assert "(default: reweight)" in " ".join(sub.choices["boost"].format_help().split())


@pytest.fixture(scope="module")
def slow_llm(tmp_path_factory):
    """A random LLM with a long context and no EOS: rows that take a while to decode."""
    cfg = ModelConfig(family="llama", vocab_size=64, hidden_size=128, intermediate_size=256, num_layers=4,
                      num_heads=4, num_kv_heads=2, head_dim=32, max_position_embeddings=4096)
    path = tmp_path_factory.mktemp("slow") / "llm"
    save_checkpoint(path, model.init_params(cfg, jax.random.PRNGKey(0)), cfg)
    return path


def test_sigint_keeps_finished_rows_and_exits_130(slow_llm, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt_ids": [1 + i, 2, 3]} for i in range(40)])
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "specjax.cli", "generate", "--llm", str(slow_llm), "--prompts",
                             str(prompts), "--max-new-tokens", "2000", "--batch-size", "1", "--output", str(out)],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 240
        while not (out.is_file() and out.read_text().count("\n") >= 1):
            assert proc.poll() is None and time.time() < deadline, "no row was written while decoding"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        t0 = time.time()
        _, err = proc.communicate(timeout=30)
        waited = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert waited < 10
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert 1 <= len(rows) < 40 and all(len(r["token_ids"]) == 2000 for r in rows)
    assert err.strip().splitlines()[-1].startswith("interrupted: ") and "Traceback" not in err

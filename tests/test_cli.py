"""`specjax generate` end to end on tiny converted checkpoints: output fields, modes, errors."""

import json

import pytest

from specjax.cli import main


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "prompts.jsonl"
    path.write_text('{"prompt": "hello world"}\n\n{"prompt_ids": [5, 6, 7]}\n')
    return path


def run(capsys, *argv):
    try:
        code = main(list(map(str, argv)))
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_spec_and_incremental_agree(converted, prompts_file, tmp_path, capsys):
    llm = converted["llama_gqa_llama3"]
    outs = {}
    for mode in ("spec", "incremental"):
        dst = tmp_path / f"{mode}.jsonl"
        extra = ["--ssm", llm, "--ssm", llm, "--tree", "1,2", "--drafters", "ssm"] if mode == "spec" else []
        code, _, err = run(capsys, "generate", "--llm", llm, "--mode", mode, "--prompts", prompts_file,
                           "--max-new-tokens", 6, "--output", dst, *extra)
        assert code == 0, err
        assert f"mode={mode} prompts=2" in err and "MAT=" in err and "tokens/s=" in err
        rows = [json.loads(line) for line in dst.read_text().splitlines()]
        assert len(rows) == 2
        for row in rows:
            for key in ("prompt", "text", "token_ids", "llm_steps", "accepted_per_step", "seconds",
                        "finish_reason"):
                assert key in row
            assert sum(row["accepted_per_step"]) == len(row["token_ids"])
            assert row["finish_reason"] in ("eos", "max_new_tokens")
        assert rows[0]["prompt"] == "hello world" and rows[1]["prompt_ids"] == [5, 6, 7]
        outs[mode] = rows
    assert [r["token_ids"] for r in outs["spec"]] == [r["token_ids"] for r in outs["incremental"]]
    # The LLM drafting for itself: every step but the last accepts the whole depth.
    assert all(n == 3 for r in outs["spec"] for n in r["accepted_per_step"][:-1])
    assert outs["spec"][0]["acceptance_by_depth"] == [1.0, 1.0] or len(outs["spec"][0]["accepted_per_step"]) == 1


def test_generate_prints_text_with_chat(converted, capsys):
    code, out, err = run(capsys, "generate", "--llm", converted["llama_gqa_llama3"], "--prompt", "hi there",
                         "--chat", "--max-new-tokens", 4, "--temperature", 0.8, "--top-p", 0.9, "--seed", 3)
    assert code == 0, err
    assert "auto: " in err  # the automatic choice says what it chose (no SSM: recycle, lookup or incremental)
    assert "mode=" in err and "prompts=1" in err


def test_generate_with_model_free_drafters(converted, tmp_path, capsys):
    """recycle + lookup, no SSM: greedy output equals incremental; the table is saved and reloaded,
    and a table saved for another LLM is refused."""
    llm = converted["llama_gqa_llama3"]
    outs = {}
    table = tmp_path / "table.npz"
    for mode, extra in (("incremental", []), ("spec", ["--drafters", "recycle,lookup", "--budget", 4,
                                                       "--save-recycle-table", table])):
        dst = tmp_path / f"{mode}.jsonl"
        code, _, err = run(capsys, "generate", "--llm", llm, "--mode", mode, "--prompt", "w5 w6 w5 w6 w5",
                           "--max-new-tokens", 12, "--output", dst, *extra)
        assert code == 0, err
        outs[mode] = [json.loads(line) for line in dst.read_text().splitlines()]
    assert outs["spec"][0]["token_ids"] == outs["incremental"][0]["token_ids"]
    assert set(outs["spec"][0]["drafter_tokens"]) == {"recycle", "lookup"} and "accepted_by=recycle:" in err
    code, _, err = run(capsys, "generate", "--llm", llm, "--prompt", "w5", "--drafters", "recycle",
                       "--tree", "1", "--recycle-table", table, "--max-new-tokens", 2)
    assert code == 0, err
    code, _, err = run(capsys, "generate", "--llm", converted["qwen2"], "--prompt", "w5", "--drafters", "recycle",
                       "--recycle-table", table, "--max-new-tokens", 2)
    assert code == 2 and "different" in err, err


@pytest.mark.parametrize("content,message", [
    ("", "holds no prompts"),
    ("{not json}\n", "prompts.jsonl:1 is not valid JSON"),
    ('{"text": "x"}\n', 'prompts.jsonl:1 needs "prompt"'),
])
def test_bad_prompt_files(converted, tmp_path, capsys, content, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    code, _, err = run(capsys, "generate", "--llm", converted["llama_gqa_llama3"], "--prompts", path)
    assert code == 2 and message in err, err


def test_bad_arguments(converted, capsys):
    llm = str(converted["llama_gqa_llama3"])
    code, _, err = run(capsys, "generate", "--llm", llm)
    assert code == 2 and "--prompt TEXT or --prompts" in err
    code, _, err = run(capsys, "generate", "--llm", llm, "--prompt", "x", "--top-p", "1.5", "--temperature", 1)
    assert code == 2 and "argument --top-p: must be a number in (0, 1]" in err
    code, _, err = run(capsys, "generate", "--llm", llm, "--prompt", "x", "--mode", "spec", "--drafters", "ssm")
    assert code == 2 and "needs at least one SSM" in err
    code, _, err = run(capsys, "generate", "--llm", llm, "--prompt", "x", "--drafters", "ssm,medusa")
    assert code == 2 and "unknown drafter 'medusa'" in err
    for budget in (0, 10_000):
        code, _, err = run(capsys, "generate", "--llm", llm, "--prompt", "x", "--drafters", "lookup",
                           "--budget", budget, "--max-len", 64)
        assert code == 2 and "--budget" in err, err
    code, _, err = run(capsys, "generate", "--llm", llm, "--prompt", "x", "--ssm", llm, "--tree", "1,0")
    assert code == 2 and "k_2=0" in err
    code, _, err = run(capsys, "generate", "--llm", "/nonexistent/dir", "--prompt", "x")
    assert code == 2 and "/nonexistent/dir" in err

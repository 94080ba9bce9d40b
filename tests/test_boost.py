"""Boost-tuning (specjax.boost) on tiny models: training learns the LLM's tokens, boosting drops what the
ensemble covers, a killed run resumes exactly, bad input is refused by name, and `specjax boost` end to end."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from specjax import model
from specjax.boost import BoostError
from specjax.boost.boosting import boost_weights, hits
from specjax.boost.data import DataConfig, generate_dataset, load_dataset, make_samples
from specjax.boost.prompts import read_prompt_file
from specjax.boost.run import RunConfig, check_out_dir
from specjax.boost.ssm import init_ssm_params, project_embedding, ssm_config
from specjax.boost.train import TrainConfig, loss_and_metrics, loss_windows, train
from specjax.cli import main
from specjax.config import ModelConfig
from specjax.engine import LoadedModel

LLM_CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=256)


@pytest.fixture(scope="module")
def llm():
    return LoadedModel(model.init_params(LLM_CFG, jax.random.PRNGKey(0), std=0.3), LLM_CFG)


@pytest.fixture(scope="module")
def dataset(llm, tmp_path_factory):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 64, size=rng.integers(3, 9)).tolist() for _ in range(32)]
    cfg = DataConfig(max_prompt_tokens=8, max_new_tokens=16, batch_size=16, chat=False)
    return generate_dataset(llm, prompts, tmp_path_factory.mktemp("data"), cfg, progress=False), prompts


def test_data_masks_mark_llm_tokens_and_resume(llm, dataset, tmp_path):
    ds, prompts = dataset
    assert ds.tokens.shape == (32, 24) and ds.mask.shape == (32, 24)
    for i in (0, 5):
        n = len(prompts[i])
        assert ds.tokens[i, :n].tolist() == prompts[i]
        assert ds.mask[i, :n].sum() == 0 and ds.mask[i, n:n + 16].tolist() == [1] * 16  # no EOS: 16 new
        # greedy continuations: the LLM's argmax
        logits = model.causal_logits(llm.params, LLM_CFG, ds.tokens[i:i + 1, :n + 16])[0]
        assert ds.tokens[i, n + 1:n + 16].tolist() == np.argmax(logits, -1)[n:n + 15].tolist()
    # make_samples truncates prompts from the left and pads
    t, m = make_samples([[1, 2, 3, 4]], [[9, 9]], seq_len=5, max_prompt_tokens=2)
    assert t.tolist() == [[3, 4, 9, 9, 0]] and m.tolist() == [[0, 0, 1, 1, 0]]


def test_data_generation_resumes_skipping_done_chunks(llm, dataset, tmp_path):
    ds, prompts = dataset
    cfg = DataConfig(max_prompt_tokens=8, max_new_tokens=16, batch_size=16, chat=False)
    generate_dataset(llm, prompts[:16], tmp_path, cfg, progress=False)  # "killed" after the first chunk
    part0 = (tmp_path / "part-00000.npz").stat().st_mtime_ns
    again = generate_dataset(llm, prompts, tmp_path, cfg, progress=False)
    assert (tmp_path / "part-00000.npz").stat().st_mtime_ns == part0  # not regenerated
    np.testing.assert_array_equal(again.tokens, ds.tokens)
    np.testing.assert_array_equal(load_dataset(tmp_path).mask, ds.mask)


def test_training_lowers_loss_and_raises_agreement(llm, dataset):
    ds, _ = dataset
    cfg = ssm_config("micro", LLM_CFG)
    params = init_ssm_params(cfg, jax.random.PRNGKey(1), llm.params, "llm")
    tcfg = TrainConfig(steps=120, batch_size=16, lr=1e-2, warmup_steps=10, log_every=20)
    _, hist = train(params, cfg, ds.tokens, ds.mask.astype(np.float32), tcfg, log=None)
    assert hist[-1]["loss"] < 0.6 * hist[0]["loss"], hist
    assert hist[-1]["agree"] > hist[0]["agree"] + 0.2, hist


def test_windowed_loss_equals_full_loss(llm, dataset):
    """The LM head runs only over each row's loss window, and gives the full loss and agreement."""
    ds, _ = dataset
    cfg = ssm_config("micro", LLM_CFG)
    params = init_ssm_params(cfg, jax.random.PRNGKey(1), llm.params, "llm")
    w = ds.mask.astype(np.float32)
    w[3, :] = 0  # a row with no loss at all
    w[4, 12] = 0  # a hole inside a window (boosting's "positions" mode)
    starts, window = loss_windows(w)
    assert window == 16 and starts[0] == len(dataset[1][0]) - 1
    lm = jax.jit(loss_and_metrics, static_argnames=("cfg", "window"))  # as training runs it, not op by op
    full = lm(params, cfg, ds.tokens, w)[1]
    win = lm(params, cfg, ds.tokens, w, starts, window)[1]
    for k in ("loss", "agree"):
        np.testing.assert_allclose(float(win[k]), float(full[k]), rtol=1e-5)
    # a window that runs past the end of the sequence counts nothing twice
    w2 = np.zeros_like(w)
    w2[:, -3:] = 1
    s2, _ = loss_windows(w2)
    win2 = lm(params, cfg, ds.tokens, w2, s2, 8)[1]
    np.testing.assert_allclose(float(win2["loss"]), float(lm(params, cfg, ds.tokens, w2)[1]["loss"]),
                               rtol=1e-5)


def test_boost_weights_drop_and_positions_exact():
    mask = np.array([[0, 1, 1, 1], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]], np.uint8)
    hit_a = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]], bool)
    hit_b = np.array([[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0], [1, 1, 0, 0]], bool)
    w, stats = boost_weights(mask, [hit_a], "drop")
    # sample 1 is covered by A; sample 0 misses position 3; sample 3 has nothing to learn (covered)
    assert w.tolist() == [[0, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert stats == {"samples": 4, "samples_covered": 2, "samples_kept": 2, "positions": 7,
                     "positions_covered": 4, "positions_kept": 5, "weight": 5.0}
    w, stats = boost_weights(mask, [hit_a, hit_b], "drop")  # A or B covers 0, 1; 2 misses position 3
    assert w.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert stats["samples_kept"] == 1 and stats["positions_kept"] == 2
    w, stats = boost_weights(mask, [hit_a], "positions")
    assert w.tolist() == [[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert stats["positions_kept"] == 3 and stats["samples_kept"] == 2
    w, stats = boost_weights(mask, [hit_a], "reweight", covered_weight=0.25)
    assert w.tolist() == [[0, .25, .25, 1], [0, .25, .25, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert stats["positions_kept"] == 7 and stats["weight"] == 4.0 and stats["samples_kept"] == 3
    with pytest.raises(ValueError, match="covered_weight"):
        boost_weights(mask, [hit_a], "reweight", covered_weight=2.0)
    # hits: the prediction after tokens[:t] against tokens[t]
    assert hits(np.array([[5, 6, 7]]), np.array([[6, 0, 9]])).tolist() == [[False, True, False]]


def test_killed_and_resumed_run_ends_with_the_same_params(llm, dataset, tmp_path):
    ds, _ = dataset
    cfg = ssm_config("micro", LLM_CFG)
    params = init_ssm_params(cfg, jax.random.PRNGKey(2), llm.params, "llm")
    tcfg = TrainConfig(steps=12, batch_size=5, lr=5e-3, warmup_steps=3, checkpoint_every=4, log_every=1)
    w = ds.mask.astype(np.float32)
    full, _ = train(params, cfg, ds.tokens, w, tcfg, state_dir=tmp_path / "a", log=None)
    train(params, cfg, ds.tokens, w, tcfg, state_dir=tmp_path / "b", stop_at=6, log=None)  # killed at 6
    resumed, hist = train(params, cfg, ds.tokens, w, tcfg, state_dir=tmp_path / "b", resume=True, log=None)
    assert hist[0]["step"] == 7  # continued, not restarted
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="another train config"):
        train(params, cfg, ds.tokens, w, dataclasses.replace(tcfg, lr=1e-3), state_dir=tmp_path / "b",
              resume=True, log=None)


def test_ssm_config_and_embedding_init(llm, tmp_path):
    bad = tmp_path / "ssm.json"
    bad.write_text(json.dumps({"vocab_size": 999, "hidden_size": 16}))
    with pytest.raises(BoostError, match=r"ssm.json: SSM vocab_size=999 differs from the LLM's vocab_size=64"):
        ssm_config(str(bad), LLM_CFG)
    with pytest.raises(BoostError, match="not a preset"):
        ssm_config("huge", LLM_CFG)
    good = tmp_path / "ok.json"
    good.write_text(json.dumps({"hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
                                "head_dim": 8, "intermediate_size": 32}))
    cfg = ssm_config(str(good), LLM_CFG)
    assert cfg.vocab_size == 64 and cfg.hidden_size == 16 and cfg.tie_word_embeddings
    p = init_ssm_params(cfg, jax.random.PRNGKey(0), llm.params, "llm")
    assert p["embed"].shape == (64, 16)
    # the projection keeps the LLM embedding's leading directions: same top singular values up to scale
    e = np.asarray(llm.params["embed"])
    proj = project_embedding(e, 16)
    s_full, s_proj = np.linalg.svd(e, compute_uv=False), np.linalg.svd(proj, compute_uv=False)
    np.testing.assert_allclose(s_proj / s_proj[0], s_full[:16] / s_full[0], rtol=1e-4)
    np.testing.assert_array_equal(project_embedding(e, 32), e)


def test_prompt_file_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(BoostError, match=r"prompt file .*empty.jsonl is empty"):
        read_prompt_file(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    with pytest.raises(BoostError, match=r"bad.jsonl:2: not valid JSON"):
        read_prompt_file(bad)
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"question": "q?"}\n{"text": "x"}\n')
    with pytest.raises(BoostError, match=r"nofield.jsonl:2: needs a non-empty text field"):
        read_prompt_file(nofield)
    txt = tmp_path / "p.txt"
    txt.write_text("one\n\n two \n")
    assert read_prompt_file(txt) == ["one", "two"]


def test_out_dir_holding_another_run_is_refused(tmp_path):
    run = RunConfig(llm="x", prompts=("p",), num_ssms=2, ssm_config="micro", data=DataConfig(),
                    train=TrainConfig())
    check_out_dir(tmp_path / "new", run, resume=False)  # absent: fine
    (tmp_path / "run" ).mkdir()
    (tmp_path / "run" / "boost_run.json").write_text(json.dumps(run.to_dict()))
    check_out_dir(tmp_path / "run", run, resume=True)  # the same run, resumed: fine
    with pytest.raises(BoostError, match="already holds this boost run: pass --resume"):
        check_out_dir(tmp_path / "run", run, resume=False)
    other = dataclasses.replace(run, num_ssms=3, train=TrainConfig(steps=5))
    with pytest.raises(BoostError, match=r"holds another boost run \(different num_ssms, train\)"):
        check_out_dir(tmp_path / "run", other, resume=True)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "f").write_text("x")
    with pytest.raises(BoostError, match="holds no boost run"):
        check_out_dir(tmp_path / "junk", run, resume=False)


def run_cli(capsys, *argv):
    code = main(list(map(str, argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_boost_end_to_end(converted, tmp_path, capsys):
    llm = converted["llama_gqa_llama3"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(" ".join(f"w{(7 * i + j) % 90 + 5}" for j in range(6)) for i in range(12)))
    out = tmp_path / "boost"
    args = ["boost", "--llm", llm, "--prompts", prompts, "--num-ssms", 2, "--ssm-config", "micro",
            "--out", out, "--steps", 8, "--batch-size", 4, "--max-new-tokens", 8, "--max-prompt-tokens", 8,
            "--eval-prompts", 2, "--eval-tree", "1,2", "--eval-max-new-tokens", 6, "--log-every", 4]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "round 0: keeps 10/10 samples" in err and "round 1: keeps" in err and "MAT by #SSMs" in err
    ev = json.loads((out / "eval.json").read_text())
    assert len(ev["agreement"]["per_ssm"]) == 2 and [r["num_ssms"] for r in ev["mat"]] == [1, 2]
    assert (out / "boost_eval.png").stat().st_size > 0 and (out / "boost_data.npz").is_file()
    assert (out / "ssm_0" / "tokenizer.json").is_file()
    # the SSMs drive `specjax generate`, and speculative output equals incremental output
    gen = tmp_path / "gen.jsonl"
    code, _, err = run_cli(capsys, "generate", "--llm", llm, "--ssm", out / "ssm_0", "--ssm", out / "ssm_1",
                           "--tree", "1,2", "--prompt", "w5 w6 w7", "--max-new-tokens", 6, "--output", gen)
    assert code == 0 and "mode=spec" in err, err
    code, _, err = run_cli(capsys, "generate", "--llm", llm, "--mode", "incremental", "--prompt", "w5 w6 w7",
                           "--max-new-tokens", 6, "--output", tmp_path / "inc.jsonl")
    assert json.loads(gen.read_text())["token_ids"] == json.loads((tmp_path / "inc.jsonl").read_text())["token_ids"]
    # and export to Hugging Face
    from checkpoints_convert import export_hf

    export_hf(out / "ssm_0", tmp_path / "hf_ssm")
    assert (tmp_path / "hf_ssm" / "config.json").is_file()
    # the same run again: refused without --resume, finished with it; another config: refused
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "pass --resume" in err
    code, _, err = run_cli(capsys, *args, "--resume")
    assert code == 0 and "ssm_1: done, loaded" in err, err
    code, _, err = run_cli(capsys, *args[:-2], "--log-every", 2, "--resume")
    assert code == 2 and "holds another boost run (different train)" in err
    # another SSM config on the same data: the data directory is reused, not regenerated
    stamp = (out / "data" / "part-00000.npz").stat().st_mtime_ns
    other = [a if a != "micro" else "tiny" for a in args]
    other[other.index(out)] = tmp_path / "boost_tiny"
    import sys

    with pytest.MonkeyPatch.context() as mp:  # a default install: no matplotlib, the plot is skipped, not fatal
        mp.setitem(sys.modules, "matplotlib", None)
        code, _, err = run_cli(capsys, *other, "--num-ssms", 1, "--init", "random", "--data-from", out / "data")
    assert code == 0, err
    assert "note: matplotlib is not installed, so boost_eval.png was not drawn" in err
    assert (tmp_path / "boost_tiny" / "eval.json").is_file() and not (tmp_path / "boost_tiny" / "boost_eval.png").exists()
    assert json.loads((tmp_path / "boost_tiny" / "boost_run.json").read_text())["boost_mode"] == "reweight"  # the default
    assert "round 0: keeps 10/10 samples" in err and (tmp_path / "boost_tiny" / "ssm_0").is_dir()
    assert not (tmp_path / "boost_tiny" / "data").exists()
    assert (out / "data" / "part-00000.npz").stat().st_mtime_ns == stamp
    other[other.index(tmp_path / "boost_tiny")] = tmp_path / "boost_x"
    code, _, err = run_cli(capsys, *other, "--max-new-tokens", 4, "--data-from", out / "data")
    assert code == 2 and "made with another data" in err

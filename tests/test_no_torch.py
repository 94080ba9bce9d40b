"""A default install has no torch: commands say what they need before any work, and stay quiet about
what they do not. Converters check their destination before converting a tensor."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import checkpoints_convert
import checkpoints_convert.gguf
from checkpoints_convert import CheckpointError, convert
from specjax.cli import main

ROOT = Path(__file__).resolve().parent.parent


def no_tensor_reads(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("tensors were read before the check")
    monkeypatch.setattr(checkpoints_convert.gguf, "read_gguf", fail)
    monkeypatch.setattr(checkpoints_convert, "read_source", fail)


def test_gguf_without_torch_fails_before_any_work(tmp_path, monkeypatch, capsys):
    from specjax.default_model import default_gguf_path

    gguf = default_gguf_path()  # a real llama.cpp file, with its tokenizer in the metadata
    import transformers

    assert transformers.utils.is_torch_available()  # cached by transformers now, not with torch hidden below
    no_tensor_reads(monkeypatch)
    monkeypatch.setitem(sys.modules, "torch", None)  # as on a default install
    code = main(["generate", "--llm", str(gguf), "--prompt", "hi", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "needs torch: pip install torch" in err and gguf.name in err, err
    with pytest.raises(CheckpointError, match="needs torch: pip install torch"):
        convert(gguf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_converters_check_the_destination_first(gguf_files, converted, tmp_path, monkeypatch):
    no_tensor_reads(monkeypatch)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep me")
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        convert(gguf_files["quantized"], full)
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match="is a file"):
        convert(gguf_files["quantized"], tmp_path / "file")
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        checkpoints_convert.export_hf(converted["qwen2"], full)
    assert (full / "x").read_text() == "keep me"


def test_no_pytorch_banner(converted):
    """transformers' "PyTorch was not found" advice is not shown by specjax commands."""
    code = ("import sys; sys.modules['torch'] = None; from specjax.cli import main; "
            f"sys.exit(main(['generate', '--llm', {str(converted['llama_gqa_llama3'])!r}, '--prompt', 'w5 w6', "
            "'--max-new-tokens', '2']))")
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "PyTorch was not found" not in proc.stderr and "prompts=1 new_tokens=2" in proc.stderr

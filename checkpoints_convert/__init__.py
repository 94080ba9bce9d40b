"""Checkpoint conversion: Hugging Face directories and llama.cpp GGUF files <-> specjax checkpoints.

    python -m checkpoints_convert SRC DST           # HF directory or .gguf -> specjax checkpoint
    python -m checkpoints_convert --to-hf SRC DST   # specjax checkpoint -> HF directory (transformers)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from specjax.checkpoint import CheckpointError, flatten, is_checkpoint, load_checkpoint, make_readable, save_checkpoint
from specjax.config import ModelConfig

__all__ = ["convert", "export_hf", "read_source", "source_tokenizer", "CheckpointError"]


def _is_gguf(path: Path) -> bool:
    return path.suffix == ".gguf" and path.is_file()


def read_source(path: str | os.PathLike, progress: bool | None = None) -> tuple[dict[str, np.ndarray], ModelConfig]:
    """A Hugging Face model directory or a .gguf file -> ({specjax flat path: float32 array}, cfg)."""
    path = Path(path)
    if _is_gguf(path):
        from checkpoints_convert.gguf import read_gguf

        return read_gguf(path, progress)
    if (path / "config.json").is_file():
        from checkpoints_convert.hf import read_hf

        return read_hf(path, progress)
    raise CheckpointError(f"{path}: neither a .gguf file nor a Hugging Face model directory (config.json)")


def source_tokenizer(path: str | os.PathLike) -> Any:
    """What `save_checkpoint(tokenizer=...)` takes for this source: a tokenizer object (GGUF), the
    directory holding its tokenizer files (Hugging Face), or None."""
    path = Path(path)
    if _is_gguf(path):
        from checkpoints_convert.gguf import gguf_tokenizer

        return gguf_tokenizer(path)
    return path


def _check_destination(dst: Path, overwrite: bool) -> None:
    """dst can take a checkpoint directory: not a file, empty or absent unless overwrite, its parent
    writable."""
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst} is a file: give a directory to write the checkpoint to")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise CheckpointError(f"{dst} exists and is not empty (pass --overwrite to replace it)")
    parent = next((p for p in dst.absolute().parents if p.exists()), Path("/"))
    if not os.access(parent, os.W_OK):
        raise CheckpointError(f"{dst}: {parent} is not writable")


def _atomic_dir(dst: Path, overwrite: bool) -> Path:
    _check_destination(dst, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    make_readable(tmp)
    return tmp


def _commit(tmp: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def convert(src: str | os.PathLike, dst: str | os.PathLike, dtype: Any = np.float32, overwrite: bool = False,
            progress: bool | None = None) -> Path:
    """HF directory or .gguf -> specjax checkpoint directory (written atomically)."""
    src, dst = Path(src), Path(dst)
    _check_destination(dst, overwrite)  # the cheap checks before converting any tensor
    tokenizer = source_tokenizer(src)
    flat, cfg = read_source(src, progress)
    tmp = _atomic_dir(dst, overwrite)
    try:
        save_checkpoint(tmp, flat, cfg, tokenizer=tokenizer, dtype=dtype)
        _commit(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def export_hf(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> Path:
    """specjax checkpoint directory -> Hugging Face directory that transformers loads."""
    from checkpoints_convert.hf import write_hf

    src, dst = Path(src), Path(dst)
    if not is_checkpoint(src):
        raise CheckpointError(f"{src} is not a specjax checkpoint (no specjax_config.json)")
    _check_destination(dst, overwrite)
    params, cfg = load_checkpoint(src)
    tmp = _atomic_dir(dst, overwrite)
    try:
        write_hf(tmp, flatten(params), cfg, tokenizer_dir=src)
        _commit(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst

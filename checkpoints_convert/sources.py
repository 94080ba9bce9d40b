"""Tensor files of a Hugging Face model directory, read lazily: shapes first, data on demand.

Handles model.safetensors, sharded safetensors (model.safetensors.index.json), pytorch_model.bin and
sharded .bin (torch imported only for .bin). Errors name the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from specjax.checkpoint import CheckpointError


class TensorFiles:
    """name -> shape of every tensor (no data read), and `read(name)` -> float32 numpy array."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], readers: dict[str, Callable[[], np.ndarray]],
                 description: str):
        self.shapes, self._readers, self.description = shapes, readers, description

    def read(self, name: str) -> np.ndarray:
        x = self._readers[name]()
        return x.astype(np.float32) if x.dtype != np.float32 else x


def _safetensors_header(path: Path) -> tuple[int, dict]:
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        return n, json.loads(fh.read(n))


def _read_bf16(path: Path, name: str) -> np.ndarray:
    """numpy has no bfloat16: read the raw 16 bits and widen them to float32 (exact)."""
    n, header = _safetensors_header(path)
    info = header[name]
    start, end = info["data_offsets"]
    raw = np.fromfile(path, dtype="<u2", count=(end - start) // 2, offset=8 + n + start)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


def open_safetensors(paths: list[Path]) -> TensorFiles:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    readers: dict[str, Callable[[], np.ndarray]] = {}
    for path in paths:
        if not path.is_file():
            raise CheckpointError(f"{path}: safetensors file not found")
        try:
            handle = safe_open(str(path), framework="np")
            for name in handle.keys():
                sl = handle.get_slice(name)
                shapes[name] = tuple(sl.get_shape())
                if sl.get_dtype() == "BF16":
                    readers[name] = lambda p=path, n=name: _read_bf16(p, n)
                else:
                    readers[name] = lambda h=handle, n=name, p=path: _guarded(lambda: h.get_tensor(n), p)
        except CheckpointError:
            raise
        except Exception as e:  # SafetensorError for truncated / corrupt headers
            raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from e
    return TensorFiles(shapes, readers, ", ".join(p.name for p in paths))


def _guarded(fn: Callable[[], np.ndarray], path: Path) -> np.ndarray:
    try:
        return fn()
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read tensor ({e})") from e


def open_torch_bins(paths: list[Path]) -> TensorFiles:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"{paths[0]}: reading pytorch_model.bin needs torch (pip install torch); "
                              "safetensors checkpoints do not") from e
    shapes: dict[str, tuple[int, ...]] = {}
    readers: dict[str, Callable[[], np.ndarray]] = {}
    for path in paths:
        try:
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # files from torch < 1.6 (not zip) cannot be memory-mapped
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read torch checkpoint ({e})") from e
        for name, t in state.items():
            shapes[name] = tuple(t.shape)
            readers[name] = lambda t=t: t.detach().float().numpy()
    return TensorFiles(shapes, readers, ", ".join(p.name for p in paths))


def _index_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a valid index file ({e})") from e
    return [index.parent / f for f in sorted(set(weight_map.values()))]


def open_hf_weights(directory: str | os.PathLike) -> TensorFiles:
    """The weights of a Hugging Face model directory, whichever of the usual layouts it uses."""
    d = Path(directory)
    if (d / "model.safetensors.index.json").is_file():
        return open_safetensors(_index_files(d / "model.safetensors.index.json"))
    if (d / "model.safetensors").is_file():
        return open_safetensors([d / "model.safetensors"])
    if (d / "pytorch_model.bin.index.json").is_file():
        return open_torch_bins(_index_files(d / "pytorch_model.bin.index.json"))
    if (d / "pytorch_model.bin").is_file():
        return open_torch_bins([d / "pytorch_model.bin"])
    raise CheckpointError(f"{d}: no weights found (looked for model.safetensors[.index.json] and "
                          "pytorch_model.bin[.index.json])")

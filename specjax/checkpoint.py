"""The specjax checkpoint format: a directory that loads without torch.

    DIR/specjax_config.json   ModelConfig.to_json()
    DIR/model.safetensors     one tensor per parameter, named by its pytree path
                              ("embed", "layers.3.q", "layers.3.attn_norm.scale", "final_norm.scale")
    DIR/tokenizer*.json ...   whatever `AutoTokenizer.save_pretrained` writes (optional)
    DIR/generation_config.json  copied from a Hugging Face source when it has one (optional)

Shapes are those of `model.param_shapes(cfg)`, e.g. `layers.3.q` is [D, H, A].
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from specjax import model as model_lib
from specjax.config import ModelConfig

CONFIG_FILE = "specjax_config.json"
WEIGHTS_FILE = "model.safetensors"
# Files that make up a Hugging Face tokenizer (and its generation defaults), copied verbatim.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt or inconsistent with its config."""


# ----------------------------------------------------------------------------- pytree <-> flat names


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts / lists -> {"layers.3.q": leaf, ...} (dict keys and list indices joined by dots)."""
    if isinstance(tree, dict):
        items: Iterable = tree.items()
    elif isinstance(tree, (list, tuple)) and not _is_shape(tree):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, sub in items:
        out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
    return out


def unflatten(flat: dict[str, Any], template: Any, prefix: str = "") -> Any:
    """Inverse of `flatten`, shaped like `template` (e.g. `param_shapes(cfg)`)."""
    if isinstance(template, dict):
        return {k: unflatten(flat, v, f"{prefix}.{k}" if prefix else k) for k, v in template.items()}
    if isinstance(template, list):
        return [unflatten(flat, v, f"{prefix}.{i}" if prefix else str(i)) for i, v in enumerate(template)]
    return flat[prefix]


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Flat parameter name -> shape, the contract every checkpoint is checked against."""
    return flatten(model_lib.param_shapes(cfg))


def check_tensors(shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], source: str) -> None:
    """Raises CheckpointError naming every missing, unexpected or wrongly shaped tensor of `source`."""
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = [f"{n}: expected {tuple(expected[n])}, found {tuple(shapes[n])}"
             for n in sorted(set(shapes) & set(expected)) if tuple(shapes[n]) != tuple(expected[n])]
    problems = []
    if missing:
        problems.append(f"missing tensor(s): {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected tensor(s): {', '.join(extra)}")
    if wrong:
        problems.append(f"shape mismatch: {'; '.join(wrong)}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))


# ----------------------------------------------------------------------------- save / load


def save_checkpoint(directory: str | os.PathLike, params: Any, cfg: ModelConfig, tokenizer: Any = None,
                    dtype: Any = None) -> Path:
    """Writes params (a pytree, or an already flat {name: array} dict) and cfg to `directory`.

    tokenizer: a Hugging Face tokenizer (anything with `save_pretrained`), or a directory whose
    tokenizer files are copied, or None. dtype: cast floating tensors to it (default: keep).
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}  # a flat dict flattens to itself
    if dtype is not None:
        flat = {k: v.astype(dtype) for k, v in flat.items()}
    check_tensors({k: v.shape for k, v in flat.items()}, expected_shapes(cfg), "save_checkpoint")
    save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, str(directory / WEIGHTS_FILE),
              metadata={"format": "specjax"})
    (directory / CONFIG_FILE).write_text(cfg.to_json() + "\n")
    if tokenizer is not None:
        if hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(directory))
        else:
            copy_tokenizer_files(tokenizer, directory)
    make_readable(directory / WEIGHTS_FILE)
    return directory


def make_readable(path: str | os.PathLike) -> None:
    """Gives a file or directory the permissions the umask allows: temporary directories and
    safetensors' writer create them private (0700 / 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask)


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copies the tokenizer (and generation_config) files present in src to dst; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


def load_config(directory: str | os.PathLike) -> ModelConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a specjax checkpoint: {CONFIG_FILE} not found")
    try:
        return ModelConfig.from_json(path.read_text())
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot parse: {e}") from e


def load_checkpoint(directory: str | os.PathLike, dtype: Any = np.float32) -> tuple[dict, ModelConfig]:
    """-> (params pytree of numpy arrays in `dtype`, cfg). Checks every tensor's presence and shape."""
    from safetensors import safe_open

    cfg = load_config(directory)
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} not found")
    try:
        with safe_open(str(path), framework="np") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
            check_tensors(shapes, expected_shapes(cfg), str(path))
            flat = {name: f.get_tensor(name).astype(dtype, copy=False) for name in shapes}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error type for truncated / corrupt files
        raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from e
    return unflatten(flat, model_lib.param_shapes(cfg)), cfg


def is_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def load_model(path: str | os.PathLike, dtype: Any = np.float32) -> tuple[dict, ModelConfig]:
    """Loads a specjax checkpoint directory, or converts a Hugging Face directory / .gguf on the fly."""
    path = Path(path)
    if is_checkpoint(path):
        return load_checkpoint(path, dtype)
    if (path.is_file() and path.suffix == ".gguf") or (path / "config.json").is_file():
        from checkpoints_convert import read_source  # the converter depends on specjax, not the reverse

        flat, cfg = read_source(path)
        return unflatten({k: v.astype(dtype) for k, v in flat.items()}, model_lib.param_shapes(cfg)), cfg
    raise CheckpointError(
        f"{path}: not a specjax checkpoint ({CONFIG_FILE}), a Hugging Face model directory (config.json) "
        "or a .gguf file")

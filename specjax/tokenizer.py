"""A thin wrapper over a Hugging Face tokenizer: text <-> token ids, chat template, end-of-sequence ids.

A plain `tokenizers` tokenizer loads through specjax.fast_tokenizer (no transformers import), any other
through transformers' AutoTokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence


class TokenizerError(ValueError):
    """A tokenizer that is missing, or lacks what was asked of it (e.g. a chat template)."""


def _token_ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


class Tokenizer:
    """hf: the transformers tokenizer (or a fast_tokenizer.FastTokenizer). eos_token_ids: every id that ends
    generation."""

    def __init__(self, hf: Any, eos_token_ids: Sequence[int] = ()):
        self.hf = hf
        ids = _token_ids(getattr(hf, "eos_token_id", None)) + list(eos_token_ids)
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(ids))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def encode(self, text: str, chat: bool = False) -> list[int]:
        """text -> ids. chat: wrap text as one user message with the chat template (generation prompt
        appended); the template then decides the special tokens."""
        if not chat:
            return list(self.hf(text, add_special_tokens=True)["input_ids"])
        if not self.has_chat_template:
            raise TokenizerError("--chat was asked but this tokenizer has no chat template; "
                                 "use a chat/instruct model or drop --chat")
        prompt = self.hf.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
        return list(self.hf(prompt, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        self.hf.save_pretrained(str(directory))


def _json_eos(path: Path, *keys: str) -> list[int]:
    if not path.is_file():
        return []
    d = json.loads(path.read_text())
    for key in keys:
        d = d.get(key) if isinstance(d, dict) else None
    return _token_ids(d)


def require_gguf_tokenizer_support(path: str | os.PathLike) -> None:
    """transformers builds a .gguf's tokenizer with its GGUF reader, which imports torch: say so before
    any work rather than fail in the middle of it."""
    import importlib.util

    try:
        has_torch = importlib.util.find_spec("torch") is not None
    except ValueError:  # a module entry without a spec
        has_torch = False
    if not has_torch:
        raise TokenizerError(
            f"{path}: the tokenizer of a .gguf file is built by transformers' GGUF reader, which needs torch: "
            "pip install torch --index-url https://download.pytorch.org/whl/cpu (the CPU build is enough), "
            "or convert the file once where torch is installed (python -m checkpoints_convert FILE.gguf DIR) "
            "and use --llm DIR")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """From a directory with tokenizer files (tokenizer.json, or SentencePiece tokenizer.model), or a .gguf.

    End-of-sequence ids: the tokenizer's, then generation_config.json's, config.json's and
    specjax_config.json's (all that exist)."""
    path = Path(path)
    if not path.exists():
        raise TokenizerError(f"{path} does not exist")
    gguf = path.suffix == ".gguf" and path.is_file()
    if gguf:
        require_gguf_tokenizer_support(path)
    eos = [] if gguf else (_json_eos(path / "generation_config.json", "eos_token_id")
                           + _json_eos(path / "config.json", "eos_token_id")
                           + _json_eos(path / "specjax_config.json", "eos_token_ids"))
    if not gguf:
        from specjax import fast_tokenizer

        fast = fast_tokenizer.load(path)  # a plain `tokenizers` one: no transformers import (~2 s)
        if fast is not None:
            return Tokenizer(fast, eos)
    from transformers import AutoTokenizer

    try:
        if gguf:
            return Tokenizer(AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))
        hf = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path}: cannot load a tokenizer ({e})") from e
    return Tokenizer(hf, eos)

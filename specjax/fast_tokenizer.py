"""A Hugging Face tokenizer directory loaded without importing transformers' tokenizer classes.

`from transformers import AutoTokenizer` costs ~1.9 s of every command's start (the default model's
`specjax generate` takes ~11 s in all with warm caches). Where a directory's tokenizer is a plain
`tokenizers` one (tokenizer_config.json's class TokenizersBackend or PreTrainedTokenizerFast, none of
the options with which transformers rewrites the backend on load), transformers itself only forwards to
the Rust `tokenizers` library that it wraps: this module does the same, and renders a chat template
with transformers' own renderer (imported when a template is first used, ~0.6 s). Anything else loads
through transformers (specjax.tokenizer). Tests check it against transformers on the default tokenizer.

The object has the part of a transformers tokenizer that specjax uses: `__call__(text,
add_special_tokens)` -> {"input_ids": [...]}, `apply_chat_template(messages, tokenize=False,
add_generation_prompt=...)`, `decode(ids, skip_special_tokens)`, `get_vocab()`, `chat_template`, `eos_token_id`,
`save_pretrained(dir)`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
# tokenizer_config.json options with which transformers changes the backend (or the text) on load.
REWRITING_OPTIONS = ("add_bos_token", "add_eos_token", "add_prefix_space", "legacy", "from_slow",
                     "clean_up_tokenization_spaces", "do_lower_case", "tokenizer_file", "auto_map",
                     # tokens transformers adds to the backend or hands to chat templates beyond these:
                     "additional_special_tokens", "extra_special_tokens")
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def _content(token: Any) -> str | None:
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None


def _chat_template(directory: Path, config: dict) -> tuple[bool, str | None]:
    """(usable here, the template or None). A template given as named variants stays with transformers."""
    path = directory / "chat_template.jinja"
    if path.is_file():
        return True, path.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return True, template
    return False, None


def load(directory: str | Path):
    """The directory's tokenizer as a FastTokenizer, or None where transformers must load it."""
    directory = Path(directory)
    if not (directory.is_dir() and (directory / "tokenizer.json").is_file()):
        return None
    config_path = directory / "tokenizer_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("tokenizer_class") not in PLAIN_CLASSES:
        return None
    if any(key in config for key in REWRITING_OPTIONS) or (directory / "chat_template.json").is_file():
        return None
    ok, template = _chat_template(directory, config)
    if not ok:
        return None
    try:
        import tokenizers

        backend = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception:  # a tokenizer.json this `tokenizers` cannot read: transformers says why
        return None
    if not _same_added_tokens(config.get("added_tokens_decoder") or {}, backend):
        return None
    special = {key: _content(config[key]) for key in SPECIAL_KEYS if _content(config.get(key)) is not None}
    return FastTokenizer(directory, backend, template, special)


def _same_added_tokens(declared: dict, backend) -> bool:
    """Every token tokenizer_config.json declares (id -> content, special) is tokenizer.json's already:
    otherwise transformers adds or re-flags tokens on load, which this module does not repeat."""
    have = backend.get_added_tokens_decoder()
    for key, tok in declared.items():
        try:
            got = have.get(int(key))
        except (TypeError, ValueError):
            return False
        if not isinstance(tok, dict) or got is None or got.content != tok.get("content") or \
                bool(got.special) != bool(tok.get("special", False)):
            return False
    return True


class FastTokenizer:
    def __init__(self, directory: Path, backend, chat_template: str | None, special: dict[str, str]):
        self.directory = directory
        self.backend = backend
        self.chat_template = chat_template
        self.special_tokens_map = special
        eos = special.get("eos_token")
        self.eos_token_id = None if eos is None else backend.token_to_id(eos)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = False) -> str:
        if tokenize:
            raise ValueError("FastTokenizer.apply_chat_template renders text only (tokenize=False)")
        if not self.chat_template:
            raise ValueError(f"{self.directory} has no chat template")
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(conversations=[messages], chat_template=self.chat_template,
                                            add_generation_prompt=add_generation_prompt, **self.special_tokens_map)
        return rendered[0]

    def save_pretrained(self, directory: str | Path) -> None:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if (self.directory / name).is_file():
                shutil.copyfile(self.directory / name, out / name)

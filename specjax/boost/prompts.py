"""Prompt files for boost-tuning data.

  *.jsonl: one JSON object per line with a text field "prompt", "question" or "instruction" (the first
           present is used; blank lines are skipped);
  *.txt (or any other suffix): one prompt per non-blank line.
Errors name the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from specjax.boost import BoostError

TEXT_FIELDS = ("prompt", "question", "instruction")


def read_prompt_file(path: str | Path) -> list[str]:
    """-> the prompt texts of one file, in order."""
    path = Path(path)
    if not path.is_file():
        raise BoostError(f"prompt file {path} does not exist")
    out = []
    jsonl = path.suffix in (".jsonl", ".json")
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if not jsonl:
            out.append(line.strip())
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BoostError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        text = next((row[k] for k in TEXT_FIELDS if isinstance(row, dict) and isinstance(row.get(k), str)), None)
        if text is None or not text.strip():
            raise BoostError(f"{path}:{i}: needs a non-empty text field, one of {', '.join(TEXT_FIELDS)}")
        out.append(text)
    if not out:
        raise BoostError(f"prompt file {path} is empty: no prompts")
    return out


def read_prompts(paths: Sequence[str | Path], limit: int | None = None) -> list[str]:
    """All files' prompts concatenated (first `limit` of them when given)."""
    out: list[str] = []
    for p in paths:
        out += read_prompt_file(p)
    return out[:limit] if limit else out

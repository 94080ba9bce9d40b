"""Command-line values checked up front: argparse types that name what is allowed, the help formatter
(every default shown), the usage-error class, and the prompts file reader (errors name file and line).

A bad value fails at parse time as `specjax generate: error: argument --batch-size: must be an integer
>= 1, got '-1'` (exit status 2), before any model loads.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


class UsageError(ValueError):
    """A bad command line or input file: exit status 2."""


def int_at_least(low: int):
    """argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    parse.__name__ = f"int>={low}"
    return parse


def float_in(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    """argparse type: a float in the interval (low or [low, high] or high); NaN never passes."""
    left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
    allowed = f"a number in {left}{low:g}, {'inf' if high == math.inf else f'{high:g}'}{right}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already says its default or the
    default is None / False (an option whose absence means "off" or "chosen for you", said in the help)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default is None or action.default is False or action.default is argparse.SUPPRESS
                or "default" in text or not action.option_strings):
            return text
        value = ",".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        if value in ("", []):  # the help says what an empty default means
            return text
        return f"{text} (default: {value})".lstrip()


def read_prompts(path: str) -> list[dict]:
    """A prompts jsonl file: each non-blank line {"prompt": str} or {"prompt_ids": [int, ...]} (not both).
    Rows keep their line number under "_line" (so later checks can name it)."""
    file = Path(path)
    if file.is_dir():
        raise UsageError(f"--prompts {path} is a directory: give a .jsonl file")
    if not file.is_file():
        raise UsageError(f"--prompts {path} does not exist")
    rows = []
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--prompts {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{where} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or ("prompt" not in row and "prompt_ids" not in row):
            raise UsageError(f'{where} needs "prompt" (a string) or "prompt_ids" (a list of ints)')
        if "prompt" in row and "prompt_ids" in row:
            raise UsageError(f'{where} has both "prompt" and "prompt_ids": give one')
        if "prompt" in row and not isinstance(row["prompt"], str):
            raise UsageError(f'{where}: "prompt" must be a string, got {json.dumps(row["prompt"])[:40]}')
        if "prompt_ids" in row:
            ids = row["prompt_ids"]
            if not isinstance(ids, list) or not ids:
                raise UsageError(f'{where}: "prompt_ids" must be a non-empty list of ints')
            bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int)]
            if bad:
                raise UsageError(f'{where}: "prompt_ids" must hold integers, got {json.dumps(bad[0])}')
        rows.append({**row, "_line": i})
    if not rows:
        raise UsageError(f"--prompts {path} holds no prompts")
    return rows


def check_sampling_flags(temperature: float, top_p: float | None, top_k: int | None) -> None:
    """top-p / top-k only act when sampling: refuse them with greedy decoding rather than ignore them."""
    given = [f"--{n} {v}" for n, v in (("top-p", top_p), ("top-k", top_k)) if v is not None]
    if temperature == 0 and given:
        raise UsageError(f"{' and '.join(given)} only apply when sampling, but --temperature is 0 (greedy): "
                         "give --temperature > 0 or drop them")

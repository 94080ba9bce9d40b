"""Results written as they come: a JSONL file, one line per finished request, flushed at once.

    out = ResultFile.open("out.jsonl", inputs=["prompts.jsonl"], overwrite=False, resume=False)
    out.rows          # resume: the rows already in the file (a torn last line is dropped)
    out.write(row)    # one json line, flushed
    out.close(sort_key="index")   # done: rewritten in input order (atomically)

The path is checked before any work: not a directory, its directory exists and is writable, not one of
the input files; an existing file is refused unless overwrite (replace it) or resume (append to it).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable


class OutputError(ValueError):
    """An output path that cannot be written as asked."""


def check_output_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False,
                      resume: bool = False, flag: str = "--output") -> Path:
    """Raises OutputError naming `flag` and the path unless results can be written there."""
    p = Path(path)
    if overwrite and resume:
        raise OutputError(f"{flag} {path}: give --overwrite (replace the file) or --resume (continue it), not both")
    if p.is_dir():
        raise OutputError(f"{flag} {path} is a directory: give a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{flag} {path}: directory {parent} does not exist")
    for src in inputs:
        s = Path(src)
        if s.exists() and (os.path.samefile(s, p) if p.exists() else s.resolve() == p.resolve()):
            raise OutputError(f"{flag} {path} is the input file {src}: write the results elsewhere")
    if p.exists():
        if not (overwrite or resume):
            raise OutputError(f"{flag} {path} exists: pass --overwrite to replace it or --resume to continue it")
        if not os.access(p, os.W_OK):
            raise OutputError(f"{flag} {path} is not writable")
    elif not os.access(parent, os.W_OK):
        raise OutputError(f"{flag} {path}: directory {parent} is not writable")
    return p


def read_rows(path: Path, flag: str = "--output") -> tuple[list[dict], int]:
    """The JSON objects of a results file and the byte length of its whole lines (a last line torn by
    a kill is not counted, so appending starts after the last whole row)."""
    data = path.read_bytes()
    rows, good = [], 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines, 1):
        last = i == len(lines)
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if last:  # a row torn in the middle of writing
                    break
                raise OutputError(f"{flag} {path}:{i} is not valid JSON: not a results file to resume")
            if not isinstance(row, dict):
                raise OutputError(f"{flag} {path}:{i} is not a JSON object: not a results file to resume")
            if last:  # whole JSON but no newline: keep it, finish its line
                rows.append(row)
                return rows, -1
            rows.append(row)
        good += len(line) + (0 if last else 1)
    return rows, good


class ResultFile:
    """A JSONL results file open for writing (see the module docstring)."""

    def __init__(self, path: Path, rows: list[dict], handle, flag: str):
        self.path, self.rows, self._f, self.flag = path, rows, handle, flag

    @classmethod
    def open(cls, path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False,
             resume: bool = False, flag: str = "--output") -> "ResultFile":
        p = check_output_path(path, inputs, overwrite, resume, flag)
        rows: list[dict] = []
        if resume and p.exists():
            rows, good = read_rows(p, flag)
            f = open(p, "r+b")
            if good < 0:  # the last row lacks its newline
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
            else:
                f.truncate(good)
                f.seek(good)
            f.close()
            handle = open(p, "a", encoding="utf-8")
        else:
            handle = open(p, "w", encoding="utf-8")
        return cls(p, rows, handle, flag)

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        self.rows.append(row)

    def close(self, sort_key: str | None = None) -> None:
        """Closes the file; sort_key: first rewrite it with the rows sorted by that field (atomically)."""
        self._f.close()
        if sort_key is None:
            return
        rows = sorted(self.rows, key=lambda r: r[sort_key])
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            os.chmod(tmp, 0o644 & ~_umask())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

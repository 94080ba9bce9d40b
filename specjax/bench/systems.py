"""The systems a benchmark compares, behind one call: run(batch of prompt ids) -> one row per request.

    SpecjaxSystem   specjax incremental or speculative decoding (an Engine), any sampling config
    HFSystem        transformers `generate`, plain or assisted, in a worker process (hf_worker.py)

A row is {"token_ids", "new_tokens", "llm_steps", "seconds"}: seconds is the wall time of the request's
batch until the request finished (prefill + decoding; compilation excluded for specjax; a batch's time
is its rows' largest), llm_steps None where unknown (HF).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from specjax.engine import Engine
from specjax.sampling import SamplingConfig


@dataclasses.dataclass
class SpecjaxSystem:
    name: str
    engine: Engine
    speculative: bool
    sampling: SamplingConfig
    eos_ids: tuple[int, ...]

    def run(self, batch: Sequence[Sequence[int]], max_new_tokens: int, seed: int = 0) -> list[dict]:
        gen = self.engine.generate_spec if self.speculative else self.engine.generate_incremental
        results = gen([list(p) for p in batch], max_new_tokens, self.sampling, seed, self.eos_ids)
        return [{"token_ids": r.token_ids, "new_tokens": len(r.token_ids), "llm_steps": r.llm_steps,
                 "seconds": r.seconds, "accepted_per_step": r.accepted_per_step,
                 "drafter_tokens": r.drafter_tokens} for r in results]


class HFWorkerError(ValueError):
    """The transformers side cannot run (no torch, a model it cannot load, a crashed worker)."""


class HFWorker:
    """A transformers process (python -m specjax.bench.hf_worker) that serves one request at a time."""

    def __init__(self, llm: str, assistant: str | None, export_dir: str | Path, threads: int | None = None):
        try:
            import torch  # noqa: F401  (fail here, with the fix, rather than inside the worker)
        except ImportError:
            raise HFWorkerError("the transformers baselines need PyTorch: `pip install torch` (CPU build: "
                               "`pip install torch --index-url https://download.pytorch.org/whl/cpu`), "
                               "or run with --no-hf") from None
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "specjax.bench.hf_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        try:
            self.call({"cmd": "load", "llm": str(llm), "assistant": None if assistant is None else str(assistant),
                       "export_dir": str(export_dir), "threads": threads or os.cpu_count()})
        except BaseException:
            self.close()
            raise

    def call(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise HFWorkerError(f"the transformers worker exited (code {self.proc.poll()}); see its stderr above")
        ans = json.loads(line)
        if "error" in ans:
            raise HFWorkerError(f"transformers worker: {ans['error']}\n{ans.get('traceback', '')}")
        return ans

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


@dataclasses.dataclass
class HFSystem:
    name: str
    worker: HFWorker
    assisted: bool
    eos_ids: tuple[int, ...]

    def run(self, batch: Sequence[Sequence[int]], max_new_tokens: int, seed: int = 0) -> list[dict]:
        rows = []
        for ids in batch:  # transformers' assisted generation serves one request at a time
            ans = self.worker.call({"cmd": "generate", "ids": list(ids), "max_new_tokens": max_new_tokens,
                                    "assisted": self.assisted, "eos": list(self.eos_ids)})
            toks = ans["token_ids"]
            cut = next((i + 1 for i, t in enumerate(toks) if t in self.eos_ids), len(toks))
            toks = toks[:cut]  # pad tokens after the EOS are not output
            rows.append({"token_ids": toks, "new_tokens": len(toks), "llm_steps": None, "seconds": ans["seconds"]})
        return rows

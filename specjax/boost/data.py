"""Boost-tuning data: the LLM's own continuations of prompts, as token arrays with loss masks.

A sample is one prompt (its last `max_prompt_tokens` tokens) followed by the LLM's continuation of up to
`max_new_tokens` tokens, right-padded to T = max_prompt_tokens + max_new_tokens:

    tokens [N, T] int32   prompt ids, then LLM ids, then pad (0)
    mask   [N, T] uint8   1 on the LLM-generated tokens, 0 on prompt and padding
    prompt_index [N] int32, mode [N] int8   which prompt and which decoding mode (index into `modes`)

The model at position t predicts tokens[t + 1]; the loss at t is weighted by mask[t + 1].

On disk (a directory): `part-NNNNN.npz` chunks, one per batch of prompts, written atomically. A restart
skips the prompts whose chunk exists, so a killed data run resumes where it stopped; `load_dataset`
concatenates the chunks in prompt order.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from specjax.engine import Engine, LoadedModel
from specjax.sampling import SamplingConfig

PAD = 0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """modes: 'greedy' and/or 'sample' (one sample per prompt and mode); temperature for 'sample'."""

    max_prompt_tokens: int = 96
    max_new_tokens: int = 64
    batch_size: int = 8
    modes: tuple[str, ...] = ("greedy",)
    temperature: float = 0.8
    top_p: float = 0.95
    chat: bool = True
    seed: int = 0

    @property
    def seq_len(self) -> int:
        return self.max_prompt_tokens + self.max_new_tokens


@dataclasses.dataclass
class Dataset:
    tokens: np.ndarray  # [N, T] int32
    mask: np.ndarray  # [N, T] uint8
    prompt_index: np.ndarray  # [N] int32
    mode: np.ndarray  # [N] int8

    def __len__(self) -> int:
        return len(self.tokens)

    def select(self, rows) -> "Dataset":
        return Dataset(self.tokens[rows], self.mask[rows], self.prompt_index[rows], self.mode[rows])


def make_samples(prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], seq_len: int,
                 max_prompt_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads prompt + continuation pairs into (tokens [N, T], mask [N, T])."""
    tokens = np.full((len(prompts), seq_len), PAD, np.int32)
    mask = np.zeros((len(prompts), seq_len), np.uint8)
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        p = list(p)[-max_prompt_tokens:]
        c = list(c)[: seq_len - len(p)]
        tokens[i, : len(p) + len(c)] = p + c
        mask[i, len(p): len(p) + len(c)] = 1
    return tokens, mask


def _part(directory: Path, index: int) -> Path:
    return directory / f"part-{index:05d}.npz"


def generate_dataset(llm: LoadedModel, prompt_ids: Sequence[Sequence[int]], directory: str | Path,
                     cfg: DataConfig, progress: bool = True) -> Dataset:
    """Generates (or resumes generating) the samples of every prompt into `directory`, then loads them."""
    from tqdm import tqdm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    engine = Engine(llm)
    eos = tuple(sorted(set(llm.cfg.eos_token_ids) | set(getattr(llm.tokenizer, "eos_token_ids", ()) or ())))
    samplers = {"greedy": SamplingConfig(),
                "sample": SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p)}
    starts = range(0, len(prompt_ids), cfg.batch_size)
    bar = tqdm(total=len(prompt_ids), desc="boost data", unit="prompt", disable=not progress)
    for chunk, start in enumerate(starts):
        batch = [list(p)[-cfg.max_prompt_tokens:] for p in prompt_ids[start: start + cfg.batch_size]]
        if not _part(directory, chunk).is_file():
            tokens, masks, index, modes = [], [], [], []
            for m, mode in enumerate(cfg.modes):
                res = engine.generate_incremental(batch, cfg.max_new_tokens, samplers[mode],
                                                  seed=cfg.seed + 7919 * start + m, eos_ids=eos)
                t, k = make_samples(batch, [r.token_ids for r in res], cfg.seq_len, cfg.max_prompt_tokens)
                tokens.append(t), masks.append(k)
                index.append(np.arange(start, start + len(batch), dtype=np.int32))
                modes.append(np.full(len(batch), m, np.int8))
            tmp = directory / f".tmp-{chunk:05d}.npz"
            np.savez(tmp, tokens=np.concatenate(tokens), mask=np.concatenate(masks),
                     prompt_index=np.concatenate(index), mode=np.concatenate(modes))
            os.replace(tmp, _part(directory, chunk))
        bar.update(len(batch))
    bar.close()
    return load_dataset(directory, num_chunks=len(starts))


def load_dataset(directory: str | Path, num_chunks: int | None = None) -> Dataset:
    """Concatenates the chunks (all of them, or the first num_chunks), ordered by (prompt, mode)."""
    directory = Path(directory)
    parts = sorted(directory.glob("part-*.npz"))
    if num_chunks is not None:
        parts = [_part(directory, i) for i in range(num_chunks)]
    if not parts:
        raise FileNotFoundError(f"{directory}: no boost data chunks (part-*.npz)")
    arrays = [np.load(p) for p in parts]
    ds = Dataset(*(np.concatenate([a[k] for a in arrays]) for k in ("tokens", "mask", "prompt_index", "mode")))
    return ds.select(np.lexsort((ds.mode, ds.prompt_index)))


def save_npz(ds: Dataset, path: str | Path) -> None:
    """The whole data set as one .npz (tokens, mask, prompt_index, mode)."""
    np.savez(path, tokens=ds.tokens, mask=ds.mask, prompt_index=ds.prompt_index, mode=ds.mode)

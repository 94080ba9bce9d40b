"""Training data for a feature SSM: the LLM's own continuations, its features and its top-k.

    prompt files -> chat-templated ids -> LLM greedy continuations, decoded with the features at the
                    taps and the top-k next-token distribution kept at every position (`generate`:
                    one LLM pass)
                 or reference answers, teacher-forced: one causal LLM pass per chunk (`features`)

On disk, in one directory (every file written atomically, so a killed run resumes where it stopped):

    meta.json               the LLM (config hash), taps, top-k, sequence shape: a directory made for
                            another LLM or data config is refused, not mixed in
    tokens/part-NNNNN.npz   tokens [n, T] int32, mask [n, T] (1 on LLM-generated tokens), as boost data
    feat-NNNNN.npy          features [n, T, len(taps) * D] float16: the residual stream after each tap
                            layer at every position
    topk-NNNNN.npz          ids [n, T, k] int32, probs [n, T, k] float16: the LLM's top-k next-token
                            distribution at every position (temperature 1)

Position t's features and top-k belong to the prefix tokens[:t + 1] (they predict tokens[t + 1]).
Training reads the top-k only from a prompt's last position on; generated chunks leave those of the
earlier prompt positions zero (teacher-forced ones have them: that pass computes every position).
Generated chunks once took a second, teacher-forced pass for their features (a chunk killed between
its tokens and its features is still finished that way); one pass costs ~half as much.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax import model
from specjax.boost.data import make_samples
from specjax.config import ModelConfig

TOKENS = "tokens"


class FeatureDataError(ValueError):
    """A data directory or prompt file that cannot be used as asked."""


@dataclasses.dataclass(frozen=True)
class FeatureDataConfig:
    taps: tuple[int, ...]
    top_k: int = 16
    max_prompt_tokens: int = 256
    max_new_tokens: int = 128
    batch_size: int = 32

    @property
    def seq_len(self) -> int:
        return self.max_prompt_tokens + self.max_new_tokens


def llm_fingerprint(cfg: ModelConfig) -> str:
    return hashlib.sha256(cfg.to_json().encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- prompts


def read_rows(path: str | Path, start: int = 0, stop: int | None = None) -> list[dict]:
    """Lines [start, stop) of a boost prompt file: {"prompt": str} or {"messages": [{"role", "content"}, ...]}.
    A malformed line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FeatureDataError(f"prompt file {path} does not exist")
    out = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if i - 1 < start or not line.strip():
                continue
            if stop is not None and i - 1 >= stop:
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise FeatureDataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            out.append(check_row(row, f"{path}:{i}"))
    return out


def check_row(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise FeatureDataError(f"{where}: a prompt line must be a JSON object")
    if "messages" in row:
        msgs = row["messages"]
        if (not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in msgs)):
            raise FeatureDataError(f"{where}: 'messages' must be a non-empty list of {{role: system|user|assistant, "
                                   "content: str}}")
        if not any(m["role"] == "user" for m in msgs):
            raise FeatureDataError(f"{where}: 'messages' has no user turn")
        return {"messages": msgs}
    text = next((row[k] for k in ("prompt", "question", "instruction") if isinstance(row.get(k), str)), None)
    if text is None or not text.strip():
        raise FeatureDataError(f"{where}: needs 'messages' or a non-empty 'prompt' / 'question' / 'instruction'")
    return {"messages": [{"role": "user", "content": text}]}


def encode_row(tokenizer, row: dict) -> list[int]:
    """The chat-templated ids of a row, up to and including its last user turn, generation prompt added."""
    msgs = row["messages"]
    last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
    text = tokenizer.hf.apply_chat_template(msgs[: last_user + 1], tokenize=False, add_generation_prompt=True)
    return list(tokenizer.hf(text, add_special_tokens=False)["input_ids"])


def interleave(groups: Sequence[Sequence], weights: Sequence[int]) -> list:
    """Round-robin over groups, taking weights[g] items of group g per round, until all run out."""
    its = [iter(g) for g in groups]
    out, live = [], [True] * len(groups)
    while any(live):
        for g, it in enumerate(its):
            for _ in range(weights[g]):
                try:
                    out.append(next(it))
                except StopIteration:
                    live[g] = False
                    break
    return out


# ----------------------------------------------------------------------------- the LLM passes


@functools.partial(jax.jit, static_argnames=("cfg", "taps", "k"))
def _features(params, tokens, cfg: ModelConfig, taps: tuple[int, ...], k: int):
    B, T = tokens.shape
    cache = model.init_cache(cfg, B, T, model.compute_dtype(params))
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (B, T, T))
    hidden, _, feats = model.forward_features(params, cfg, tokens, pos, cache, pos, mask, taps)
    logp = jax.nn.log_softmax(model.lm_head(params, cfg, hidden), axis=-1)
    top, ids = jax.lax.top_k(logp, k)
    return feats.astype(jnp.float16), ids.astype(jnp.int32), jnp.exp(top).astype(jnp.float16)


def features(params, cfg: ModelConfig, tokens: np.ndarray, taps: tuple[int, ...], k: int, rows: int = 8,
             mask: np.ndarray | None = None, bucket: int = 64):
    """(features [n, T, F] f16, top-k ids [n, T, k], probs [n, T, k] f16) of tokens [n, T], `rows` at a time.

    mask [n, T]: where the continuations are; with it, rows are read in order of length and each group only
    up to its longest row (rounded up to `bucket`): the LLM is causal, so the positions kept are the same,
    and those past a row's end (padding, no loss there) are zeros instead of the padding's features."""
    n, T = tokens.shape
    if mask is None:
        lengths = np.full(n, T)
    else:
        lengths = np.where(mask.any(1), T - np.argmax(mask[:, ::-1] != 0, axis=1), 0)
    order = np.argsort(lengths, kind="stable")
    out = None
    for i in range(0, n, rows):
        group = order[i: i + rows]
        L = int(min(T, max(bucket, -(-int(lengths[group].max()) // bucket) * bucket)))
        got = [np.asarray(o) for o in _features(params, jnp.asarray(tokens[group, :L]), cfg, taps, k)]
        if out is None:
            out = [np.zeros((n, T) + g.shape[2:], g.dtype) for g in got]
        for o, g in zip(out, got):
            o[group, :L] = g
    return tuple(out)


@functools.partial(jax.jit, static_argnames=("cfg", "taps", "k", "new", "eos"))
def _generate(params, prompts, lengths, cfg: ModelConfig, taps: tuple[int, ...], k: int, new: int,
              eos: tuple[int, ...]):
    """Greedy continuations and, from the same LLM pass, the features and top-k they need.

    prompts [B, L] right-padded, lengths [B] = P_b. Row b's token at sequence index i: the prompt for
    i < P_b, then the continuation c_t at P_b + t. Returns (continuations [B, new] (the tokens a row
    emitted after its first EOS are not its own), features [B, L + new, F] f16 at every position up to
    P_b + new - 1, top-k ids [B, L + new, k] and probs f16 at positions P_b - 1 .. P_b + new - 1: those of
    the prompt before its last position are zeros (never a training target: see the module doc))."""
    B, L = prompts.shape
    T = L + new
    cache = model.init_cache(cfg, B, T, model.compute_dtype(params))
    rows = jnp.arange(B)
    pos = jnp.broadcast_to(jnp.arange(L), (B, L))
    real = pos < lengths[:, None]
    mask = jnp.arange(T)[None, None, :] <= pos[:, :, None]
    hidden, cache, feats = model.forward_features(params, cfg, prompts, pos, cache, jnp.where(real, pos, T), mask, taps)
    F = feats.shape[-1]
    feats_all = jnp.zeros((B, T, F), jnp.float16).at[:, :L].set(jnp.where(real[..., None], feats, 0).astype(jnp.float16))
    ids_all = jnp.zeros((B, T, k), jnp.int32)
    probs_all = jnp.zeros((B, T, k), jnp.float16)

    def head(h, at, ids_all, probs_all):  # h [B, E] at positions `at` [B] -> (next tokens, top-k written)
        logits = model.lm_head(params, cfg, h)
        top, ids = jax.lax.top_k(jax.nn.log_softmax(logits, axis=-1), k)
        return (jnp.argmax(logits, axis=-1).astype(jnp.int32), ids_all.at[rows, at].set(ids.astype(jnp.int32)),
                probs_all.at[rows, at].set(jnp.exp(top).astype(jnp.float16)))

    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
    tok, ids_all, probs_all = head(last, lengths - 1, ids_all, probs_all)
    out = jnp.zeros((B, new), jnp.int32)
    done = jnp.zeros((B,), bool)

    def body(c):
        t, tok, cache, out, done, feats_all, ids_all, probs_all = c
        p = lengths + t
        h, cache, f = model.forward_features(params, cfg, tok[:, None], p[:, None], cache, p[:, None],
                                             jnp.arange(T)[None, None, :] <= p[:, None, None], taps)
        out = out.at[:, t].set(tok)
        feats_all = feats_all.at[rows, p].set(jnp.where(done[:, None], 0, f[:, 0]).astype(jnp.float16))
        nxt, ids_all, probs_all = head(h[:, 0], p, ids_all, probs_all)
        for e in eos:
            done = done | (tok == e)
        return t + 1, nxt, cache, out, done, feats_all, ids_all, probs_all

    c = (jnp.int32(0), tok, cache, out, done, feats_all, ids_all, probs_all)
    c = jax.lax.while_loop(lambda c: (c[0] < new) & ~jnp.all(c[4]), body, c)
    return c[3], c[5], c[6], c[7]


def generate(params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], new: int, taps: tuple[int, ...], k: int,
             eos: tuple[int, ...], seq_len: int, bucket: int = 32):
    """(continuations (cut after the first EOS), features [n, seq_len, F], top-k ids, probs) of the
    prompts' greedy continuations, in make_samples' layout, from one LLM pass (`_generate`). The prompt
    length is padded up to a multiple of `bucket` (fewer compiled shapes)."""
    n = len(prompts)
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    if lengths.min() < 1:
        raise FeatureDataError("an empty prompt has nothing to continue")
    if lengths.max() + new > seq_len:
        raise FeatureDataError(f"a prompt of {lengths.max()} tokens + {new} new ones exceeds seq_len {seq_len}")
    L = int(-(-lengths.max() // bucket) * bucket)
    if L + new > seq_len:
        L = int(lengths.max())
    padded = np.zeros((n, L), np.int32)
    for b, p in enumerate(prompts):
        padded[b, : len(p)] = p
    out, feats, ids, probs = (np.asarray(x) for x in _generate(params, jnp.asarray(padded), jnp.asarray(lengths),
                                                                cfg, tuple(taps), k, new, tuple(eos)))
    conts = []
    for b in range(n):
        c = out[b].tolist()
        stop = next((t for t, x in enumerate(c) if x in eos), None)
        conts.append(c[: stop + 1] if stop is not None else c)
    shape = lambda a: np.zeros((n, seq_len) + a.shape[2:], a.dtype)
    F, I, Pr = shape(feats), shape(ids), shape(probs)
    for b, c in enumerate(conts):
        end = lengths[b] + len(c)  # the row's real positions; past them zeros, as `features` leaves them
        F[b, :end], I[b, :end], Pr[b, :end] = feats[b, :end], ids[b, :end], probs[b, :end]
    return conts, F, I, Pr


def _atomic_save(path: Path, fn, *args, **kw) -> None:
    tmp = path.with_name(".tmp-" + path.name)
    with open(tmp, "wb") as f:
        fn(f, *args, **kw)
    os.replace(tmp, path)


def check_meta(directory: Path, meta: dict) -> None:
    """Writes meta.json, or refuses a directory made for another LLM or data config."""
    path = directory / "meta.json"
    if path.is_file():
        old = json.loads(path.read_text())
        for key in meta:
            if old.get(key) != meta[key]:
                raise FeatureDataError(f"{directory} holds feature data made with {key} = {old.get(key)!r}, not "
                                       f"{meta[key]!r}: use another directory")
        return
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=1))


def build(llm, prompt_ids: Sequence[Sequence[int]], directory: str | Path, cfg: FeatureDataConfig,
          progress: bool = True, log=print, responses: Sequence[Sequence[int]] | None = None) -> int:
    """Generates (or resumes) each chunk's continuations, then its features. Returns the chunk count.

    responses: teacher forcing instead of generation: each prompt's continuation is the given ids (a
    reference answer), and the LLM is read over it (its features and top-k are still the LLM's own)."""
    from tqdm import tqdm

    directory = Path(directory)
    meta = {"llm": llm_fingerprint(llm.cfg), "taps": list(cfg.taps), "top_k": cfg.top_k,
            "continuations": "generated" if responses is None else "teacher-forced",
            "max_prompt_tokens": cfg.max_prompt_tokens, "max_new_tokens": cfg.max_new_tokens,
            "batch_size": cfg.batch_size}
    check_meta(directory, meta)
    from specjax import skinny

    packed = skinny.pack_params(llm.params, llm.cfg)  # the CPU kernel where it runs (decoding and reading)
    eos = tuple(sorted(set(llm.cfg.eos_token_ids) | set(getattr(llm.tokenizer, "eos_token_ids", ()) or ())))
    (directory / TOKENS).mkdir(exist_ok=True)
    chunks = -(-len(prompt_ids) // cfg.batch_size)
    bar = tqdm(total=chunks, desc="feature data", unit="chunk", disable=not progress)
    t0, made = time.perf_counter(), 0
    for c in range(chunks):
        part = directory / TOKENS / f"part-{c:05d}.npz"
        if not part.is_file():
            batch = [list(p)[-cfg.max_prompt_tokens:] for p in prompt_ids[c * cfg.batch_size: (c + 1) * cfg.batch_size]]
            if responses is None:  # one pass: the continuations with their features and top-k
                conts, feats, ids, probs = generate(packed, llm.cfg, batch, cfg.max_new_tokens, cfg.taps, cfg.top_k,
                                                    eos, cfg.seq_len)
            else:
                conts = [list(r)[: cfg.max_new_tokens] for r in responses[c * cfg.batch_size: (c + 1) * cfg.batch_size]]
            tokens, mask = make_samples(batch, conts, cfg.seq_len, cfg.max_prompt_tokens)
            _atomic_save(part, np.savez, tokens=tokens, mask=mask)
            if responses is None:  # the top-k file last: it marks the chunk complete
                _atomic_save(directory / f"feat-{c:05d}.npy", np.save, feats)
                _atomic_save(directory / f"topk-{c:05d}.npz", np.savez, ids=ids, probs=probs)
            made += int(mask.sum())
        if not (directory / f"topk-{c:05d}.npz").is_file():
            with np.load(part) as f:
                tokens, mask = f["tokens"], f["mask"]
            feats, ids, probs = features(packed, llm.cfg, tokens, cfg.taps, cfg.top_k, mask=mask)
            _atomic_save(directory / f"feat-{c:05d}.npy", np.save, feats)
            _atomic_save(directory / f"topk-{c:05d}.npz", np.savez, ids=ids, probs=probs)
        bar.update(1)
        if log and made and (c % 10 == 9 or c == chunks - 1):
            log(f"chunk {c + 1}/{chunks}: {made} new tokens generated in {time.perf_counter() - t0:.0f} s "
                f"({made / (time.perf_counter() - t0):.1f} tokens/s, features included)")
    bar.close()
    return chunks


@dataclasses.dataclass
class FeatureData:
    """A built data directory, read lazily: features are memory-mapped."""

    tokens: np.ndarray  # [N, T]
    mask: np.ndarray  # [N, T]
    feats: list  # per chunk, memory-mapped [n, T, F]
    topk_ids: np.ndarray  # [N, T, k]
    topk_probs: np.ndarray  # [N, T, k]
    offsets: np.ndarray  # [chunks + 1] first row of each chunk
    meta: dict

    def __len__(self) -> int:
        return len(self.tokens)

    def features(self, rows: np.ndarray) -> np.ndarray:
        out = []
        for r in rows:
            c = int(np.searchsorted(self.offsets, r, side="right") - 1)
            out.append(self.feats[c][r - self.offsets[c]])
        return np.stack(out)


def load_many(directories: Sequence[str | Path], llm_cfg: ModelConfig | None = None,
              taps: tuple[int, ...] | None = None) -> FeatureData:
    """Several data directories as one (rows in directory order); each is checked as `load` does."""
    parts = [load(d, llm_cfg, taps) for d in directories]
    if len(parts) == 1:
        return parts[0]
    offsets = [0]
    for p in parts:
        for size in np.diff(p.offsets):
            offsets.append(offsets[-1] + int(size))
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])
    return FeatureData(cat("tokens"), cat("mask"), [f for p in parts for f in p.feats], cat("topk_ids"),
                       cat("topk_probs"), np.asarray(offsets), {"parts": [p.meta for p in parts]})


def load(directory: str | Path, llm_cfg: ModelConfig | None = None, taps: tuple[int, ...] | None = None) -> FeatureData:
    """The chunks that are complete (features written), in order; checks the LLM and taps when given."""
    directory = Path(directory)
    path = directory / "meta.json"
    if not path.is_file():
        raise FeatureDataError(f"{directory}: no feature data (meta.json missing)")
    meta = json.loads(path.read_text())
    if llm_cfg is not None and meta["llm"] != llm_fingerprint(llm_cfg):
        raise FeatureDataError(f"{directory} was made by another LLM (fingerprint {meta['llm']}, this one "
                               f"{llm_fingerprint(llm_cfg)})")
    if taps is not None and tuple(meta["taps"]) != tuple(taps):
        raise FeatureDataError(f"{directory} holds features of layers {meta['taps']}, not {list(taps)}")
    tokens, mask, feats, ids, probs, offsets = [], [], [], [], [], [0]
    c = 0
    while (directory / f"topk-{c:05d}.npz").is_file():
        with np.load(directory / TOKENS / f"part-{c:05d}.npz") as f:
            tokens.append(f["tokens"])
            mask.append(f["mask"])
        with np.load(directory / f"topk-{c:05d}.npz") as f:
            ids.append(f["ids"])
            probs.append(f["probs"])
        feats.append(np.load(directory / f"feat-{c:05d}.npy", mmap_mode="r"))
        offsets.append(offsets[-1] + len(tokens[-1]))
        c += 1
    if not c:
        raise FeatureDataError(f"{directory}: no complete chunk yet")
    return FeatureData(np.concatenate(tokens), np.concatenate(mask), feats, np.concatenate(ids),
                       np.concatenate(probs), np.asarray(offsets), meta)

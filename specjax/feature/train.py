"""Training a feature SSM with optax: distillation to the LLM's distribution, with training-time test.

Loss: cross-entropy of the drafter's distribution over the draft vocabulary against the LLM's own
next-token distribution (its top-k, restricted to the draft vocabulary and renormalised) -- soft
targets, not the LLM's sampled token: the drafter is judged by how often its top guesses are the LLM's,
and the soft targets say how the LLM ranks the runners-up too (CE and KL have the same gradient; CE is
what is computed). Every pass s = 1..passes of `model.ttt_outputs` is trained (pass s = drafting at
depth s from real features), weighted by pass_decay ** (s - 1): later draft steps learn to read the
drafter's own outputs, as they will when drafting (EAGLE-3's training-time test).

Feature regression (feature_weight > 0, EAGLE-1's regression loss): each pass's output o at position c
is also pulled towards fc(f_{c+1}), the fused real features that a deeper pass reads o in place of
(relative squared error, the target a constant). It is supervision of D numbers per position where the
token target gives one, which matters with a few hundred thousand tokens of data: at 600 steps it raised
held-out top-1 by 1.0 / 2.2 / 1.7 points at depths 1-3 and 12 at depth 4, which no pass trains
(docs/benchmarks.md).

Resumable exactly: the state (params, optimizer state, step) is saved atomically every
`checkpoint_every` steps; batches are a pure function of (seed, step), so a killed and resumed run
equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from specjax.feature import model as fm
from specjax.feature.data import FeatureData

from specjax.boost.train import META_FILE, STATE_FILE, TrainState, batch_rows, load_state, save_state  # noqa: F401


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 8
    crop: int = 256  # positions per sample: crop - window of context, then the window
    window: int = 128  # loss positions per sample (the continuation's first `window`)
    passes: int = 3
    pass_decay: float = 0.8
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    feature_weight: float = 1.0  # feature regression (EAGLE-1): each pass's output towards fc(f) one position on; 0: off

    def __post_init__(self):
        if not self.feature_weight >= 0:
            raise ValueError(f"feature_weight must be >= 0 (0: no feature regression), got {self.feature_weight}")
        if self.window < 1 or self.crop - self.window < max(self.passes - 2, 0):
            raise ValueError(f"crop {self.crop} must exceed window {self.window} by at least passes - 2 = "
                             f"{max(self.passes - 2, 0)} context positions")


def make_optimizer(tcfg: TrainConfig) -> optax.GradientTransformation:
    sched = optax.warmup_cosine_decay_schedule(0.0, tcfg.lr, max(min(tcfg.warmup_steps, tcfg.steps - 1), 1),
                                               max(tcfg.steps, 2), tcfg.lr * tcfg.min_lr_ratio)
    return optax.chain(optax.clip_by_global_norm(tcfg.clip_norm), optax.adamw(sched, weight_decay=tcfg.weight_decay))


# ----------------------------------------------------------------------------- draft vocabulary


def choose_vocab(data: FeatureData, size: int, eos_ids, vocab: int, extra_counts=None) -> tuple[np.ndarray, float]:
    """(d2t [size] the most frequent LLM-generated tokens (plus extra_counts [V], e.g. of reference
    answers), EOS ids always in; coverage: the fraction of the data's generated tokens it holds)."""
    counts = np.bincount(data.tokens[data.mask > 0].ravel(), minlength=vocab).astype(np.float64)
    if extra_counts is not None:
        counts = counts + extra_counts
    for e in eos_ids:
        counts[e] = np.inf
    d2t = np.sort(np.argsort(-counts, kind="stable")[:size]).astype(np.int32)
    total = max(float(data.mask.sum()), 1.0)
    covered = float(np.isin(data.tokens[data.mask > 0], d2t).sum()) / total
    return d2t, covered


def t2d(d2t: np.ndarray, vocab: int) -> np.ndarray:
    """[V] draft id of each LLM token, -1 outside the draft vocabulary."""
    out = np.full(vocab, -1, np.int32)
    out[d2t] = np.arange(len(d2t), dtype=np.int32)
    return out


# ----------------------------------------------------------------------------- batches


def make_batch(data: FeatureData, rows: np.ndarray, tcfg: TrainConfig, t2d_map: np.ndarray) -> dict:
    """Aligned arrays for `rows`, C = crop positions, the last W = window of them trained on; a row's
    window starts at its first trained position (sequence index a), and the C - W positions before it
    are context (left-padded, `valid` False, where the sequence starts later). Crop position c is
    sequence index a - (C - W) + c: it reads feats[i] and token[i + 1] and is trained (window only) on
    the LLM's distribution at i + 1 (which predicts token i + 2), weighted by mask[i + 2].
    seq0 [B] = a (pass s trains only where a depth s - 1 draft's root exists: i >= s - 1)."""
    C, W = tcfg.crop, tcfg.window
    Cp = C - W
    feats = data.features(rows)
    F = feats.shape[-1]
    k = data.topk_ids.shape[-1]
    out = dict(feats=np.zeros((len(rows), C, F), np.float16), tokens=np.zeros((len(rows), C), np.int32),
               valid=np.zeros((len(rows), C), bool), tgt=np.zeros((len(rows), W, k), np.int32),
               p=np.zeros((len(rows), W, k), np.float32), w=np.zeros((len(rows), W), np.float32),
               seq0=np.zeros(len(rows), np.int32))
    for b, r in enumerate(rows):
        mask = data.mask[r]
        gen = np.flatnonzero(mask)
        if not len(gen):
            continue
        end = int(gen[-1]) + 1  # tokens [0, end) are real; pairs (feats[i], token[i + 1]) for i < end - 1
        a = max(int(gen[0]) - 2, 0)  # first sequence index whose target token (i + 2) is generated
        lo = a - Cp  # sequence index of crop position 0 (negative: left padding)
        src = np.arange(max(lo, 0), min(lo + C, end - 1))  # sequence indices of the real pairs
        dst = src - lo
        out["feats"][b, dst] = feats[b, src]
        out["tokens"][b, dst] = data.tokens[r, src + 1]
        out["valid"][b, dst] = True
        out["seq0"][b] = a
        idx = np.arange(a, min(a + W, end - 2))  # trained sequence indices (target token idx + 2 < end)
        m = len(idx)
        ids = data.topk_ids[r, idx + 1]
        d = t2d_map[ids]
        out["tgt"][b, :m] = np.maximum(d, 0)
        out["p"][b, :m] = np.where(d >= 0, data.topk_probs[r, idx + 1].astype(np.float32), 0.0)
        out["w"][b, :m] = mask[idx + 2]
    return out


# ----------------------------------------------------------------------------- loss


def loss_and_metrics(params, cfg: FeatureConfig, embed_table, batch, tcfg: TrainConfig):
    """Weighted soft cross-entropy over the passes (plus, with tcfg.feature_weight, the relative squared
    error of each pass's output o at crop position c against fc(f_{c+1}), the fused real features it
    stands in for when a deeper pass reads it: dense supervision, EAGLE-1's regression loss); metrics:
    loss and top-1 agreement per pass."""
    emb = jnp.take(embed_table, batch["tokens"], axis=0)
    C, W = tcfg.crop, tcfg.window
    first = C - W - max(tcfg.passes - 2, 0)  # later passes run from here: exact on the window (ttt_outputs)
    outs = fm.ttt_outputs(params, cfg, batch["feats"], emb, tcfg.passes, first=first, valid=batch["valid"])
    if tcfg.feature_weight > 0:  # targets: the clean features one position on, [B, W, D], and where they exist
        g = jax.lax.stop_gradient(fm.fuse(params, batch["feats"][:, C - W:]))
        g_next = jnp.concatenate([g[:, 1:], jnp.zeros_like(g[:, :1])], axis=1)
        v_next = jnp.concatenate([batch["valid"][:, C - W + 1:], jnp.zeros_like(batch["valid"][:, :1])], axis=1)
    seq = batch["seq0"][:, None] + jnp.arange(W)[None, :]  # [B, W] sequence index of each window position
    p = batch["p"]
    psum = p.sum(-1)
    tgt_top = batch["tgt"][..., 0]
    total, metrics, wsum = 0.0, {}, 0.0
    for s, o in enumerate(outs, 1):
        w = batch["w"] * (seq >= s - 1) * (psum > 0)
        os_ = o[:, C - W:] if s == 1 else o[:, C - W - first:]  # [B, W, D]
        logp = jax.nn.log_softmax(fm.logits(params, cfg, os_), axis=-1)  # [B, W, V']
        ce = -(p * jnp.take_along_axis(logp, batch["tgt"], axis=-1)).sum(-1) / jnp.maximum(psum, 1e-6)
        den = jnp.maximum(w.sum(), 1e-6)
        loss_s = (w * ce).sum() / den
        hit1 = jnp.argmax(logp, -1) == tgt_top
        hit3 = (jax.lax.top_k(logp, 3)[1] == tgt_top[..., None]).any(-1)
        agree = (w * hit1 * (batch["p"][..., 0] > 0)).sum() / den
        metrics[f"top3_{s}"] = (w * hit3 * (batch["p"][..., 0] > 0)).sum() / den
        metrics[f"weight{s}"] = w.sum()
        if tcfg.feature_weight > 0:
            wr = (batch["w"] > 0) * v_next * (seq >= s - 1)
            err = (wr * jnp.square(os_ - g_next).sum(-1)).sum() / jnp.maximum((wr * jnp.square(g_next).sum(-1)).sum(), 1e-6)
            metrics[f"reg{s}"] = err
            loss_s = loss_s + tcfg.feature_weight * err
        weight = tcfg.pass_decay ** (s - 1)
        total, wsum = total + weight * loss_s, wsum + weight
        metrics[f"loss{s}"], metrics[f"agree{s}"] = loss_s, agree
    loss = total / wsum
    metrics["loss"] = loss
    return loss, metrics


FeatureConfig = fm.FeatureConfig


@functools.lru_cache(maxsize=None)
def make_train_step(cfg: FeatureConfig, tcfg: TrainConfig) -> Callable:
    opt = make_optimizer(tcfg)

    @jax.jit
    def train_step(state: TrainState, embed_table, batch):
        (loss, metrics), grads = jax.value_and_grad(loss_and_metrics, has_aux=True)(
            state.params, cfg, embed_table, batch, tcfg)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), metrics

    return train_step


@functools.lru_cache(maxsize=None)
def make_eval_step(cfg: FeatureConfig, tcfg: TrainConfig) -> Callable:
    return jax.jit(lambda params, embed_table, batch: loss_and_metrics(params, cfg, embed_table, batch, tcfg)[1])


def evaluate(params, cfg: FeatureConfig, embed_table, data: FeatureData, d2t: np.ndarray, tcfg: TrainConfig,
             batch_size: int = 8) -> dict:
    """Agreement with the LLM's top-1 token on every row of `data`, per draft depth (= pass): top-1
    and top-3 of the drafter (a target outside the draft vocabulary counts as a miss)."""
    tmap = t2d(d2t, cfg.llm_vocab)
    fn = make_eval_step(cfg, tcfg)
    sums: dict = {}
    for i in range(0, len(data), batch_size):
        rows = np.arange(i, min(i + batch_size, len(data)))
        batch = make_batch(data, rows, tcfg, tmap)
        m = {k: float(v) for k, v in fn(params, jnp.asarray(embed_table), {k: jnp.asarray(v) for k, v in batch.items()}).items()}
        for s in range(1, tcfg.passes + 1):
            w = m[f"weight{s}"]
            for key in (f"agree{s}", f"top3_{s}"):
                sums[key] = sums.get(key, 0.0) + m[key] * w
            sums[f"weight{s}"] = sums.get(f"weight{s}", 0.0) + w
    return {k: v / max(sums[f"weight{k[-1]}"], 1e-9) for k, v in sums.items() if not k.startswith("weight")}


# ----------------------------------------------------------------------------- the loop


def train(params, cfg: FeatureConfig, embed_table, data: FeatureData, d2t: np.ndarray, tcfg: TrainConfig,
          state_dir: str | Path | None = None, resume: bool = False, stop_at: int | None = None,
          log: Callable[[str], None] | None = print, log_every: int = 25,
          reload: Callable[[], FeatureData] | None = None,
          on_checkpoint: Callable[[dict, int], None] | None = None) -> tuple[dict, list[dict]]:
    """Trains on `data`; checkpoints to state_dir; resume continues from it; stop_at stops (and
    checkpoints) after that step as a killed run would. Returns (params, logged metrics).

    reload: called at every checkpoint for the data to go on with (a data directory still being
    built); then batches depend on when the data grew, and a resumed run equals an uninterrupted one
    only for data that no longer grows. on_checkpoint(params, step): e.g. export the drafter."""
    state_dir = Path(state_dir) if state_dir else None
    opt = make_optimizer(tcfg)
    state = TrainState(params, opt.init(params), jnp.int32(0))
    if resume and state_dir and (state_dir / STATE_FILE).is_file():
        state = load_state(state_dir, state, tcfg)
        if log:
            log(f"resumed at step {int(state.step)}")
    tmap = t2d(d2t, cfg.llm_vocab)
    step_fn = make_train_step(cfg, tcfg)
    embed_table = jnp.asarray(embed_table)
    history, t0, seen = [], time.perf_counter(), 0
    last = min(tcfg.steps, stop_at) if stop_at is not None else tcfg.steps
    while int(state.step) < last:
        i = int(state.step)
        batch = make_batch(data, batch_rows(len(data), i, tcfg.batch_size, tcfg.seed), tcfg, tmap)
        state, metrics = step_fn(state, embed_table, {k: jnp.asarray(v) for k, v in batch.items()})
        seen += int(batch["w"].sum())
        if (i + 1) % log_every == 0 or i + 1 == last:
            m = {k: float(v) for k, v in metrics.items()}
            m["step"] = i + 1
            history.append(m)
            if log:
                dt = time.perf_counter() - t0
                log(f"step {i + 1}/{tcfg.steps} loss {m['loss']:.3f} agree " +
                    " / ".join(f"{m[f'agree{s}']:.3f}" for s in range(1, tcfg.passes + 1)) +
                    ("" if "reg1" not in m else " feature error " +
                     " / ".join(f"{m[f'reg{s}']:.3f}" for s in range(1, tcfg.passes + 1))) +
                    f" ({seen / dt:.0f} target tokens/s)")
        if (i + 1) % tcfg.checkpoint_every == 0 or i + 1 == last:
            if state_dir:
                save_state(state_dir, state, tcfg)
            if on_checkpoint:
                on_checkpoint(state.params, i + 1)
            if reload is not None:
                data = reload()
    return state.params, history

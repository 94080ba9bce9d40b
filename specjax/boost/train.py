"""Training an SSM on the LLM's tokens with optax.

    loss = sum_t w[b, t+1] * CE(logits[b, t], tokens[b, t+1]) / sum w      (masked cross-entropy)

w [N, T] are per-token weights: the data's loss mask, zeroed by boosting where the ensemble already
agrees (see boosting.py). Optimiser: clip_by_global_norm -> AdamW with linear warmup + cosine decay
(to min_lr_ratio * lr); with freeze_embed the (tied) embedding gets no update.

Data order is a pure function of (seed, step): the stream of sample rows is the concatenation of
permutations, epoch e's from numpy's Generator seeded with (seed, e). A checkpoint therefore holds
params, the AdamW state, the step and the seed, and `resume` continues a killed run exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from specjax import checkpoint, model
from specjax.config import ModelConfig

STATE_FILE = "train_state.npz"
META_FILE = "train_state.json"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    freeze_embed: bool = False
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 25


@flax.struct.dataclass
class TrainState:
    params: dict
    opt_state: optax.OptState
    step: jax.Array  # int32 []


def schedule(tcfg: TrainConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=tcfg.lr, warmup_steps=max(min(tcfg.warmup_steps, tcfg.steps - 1), 1),
        decay_steps=max(tcfg.steps, 2), end_value=tcfg.lr * tcfg.min_lr_ratio)


def make_optimizer(tcfg: TrainConfig) -> optax.GradientTransformation:
    tx = optax.chain(optax.clip_by_global_norm(tcfg.clip_norm),
                     optax.adamw(schedule(tcfg), weight_decay=tcfg.weight_decay))
    if not tcfg.freeze_embed:
        return tx
    labels = lambda params: {k: jax.tree.map(lambda _: "frozen" if k == "embed" else "train", v)
                             for k, v in params.items()}
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def loss_and_metrics(params, cfg: ModelConfig, tokens, weights, starts=None, window: int | None = None):
    """tokens int [B, T], weights float [B, T] -> (loss [], {"loss", "agree"}): agree is the weighted
    fraction of positions where the SSM's argmax equals the LLM's token.

    The LM head (V x D multiply-adds per position, most of a small SSM's cost) runs only where a loss can
    be: starts int [B] and the static `window` select the prediction positions starts[b] + [0, window)
    (their weights are weights[b, starts[b] + 1 + j]); the caller makes sure every nonzero weight of a row
    falls inside its window (`loss_windows`). Without starts: every position, window T - 1."""
    B, T = tokens.shape
    hidden = model.causal_hidden(params, cfg, tokens[:, :-1])  # [B, T-1, D]
    targets, w = tokens[:, 1:], weights[:, 1:].astype(jnp.float32)
    if starts is not None:
        idx = starts[:, None] + jnp.arange(window)[None, :]  # [B, W]
        valid = idx <= T - 2
        idx = jnp.minimum(idx, T - 2)
        hidden = jnp.take_along_axis(hidden, idx[..., None], axis=1)  # [B, W, D]
        targets = jnp.take_along_axis(targets, idx, axis=1)
        w = jnp.take_along_axis(w, idx, axis=1) * valid
    logits = model.lm_head(params, cfg, hidden)  # [B, W, V]
    logz = jax.nn.logsumexp(logits, axis=-1)
    ce = logz - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    total = jnp.maximum(w.sum(), 1e-6)
    loss = (w * ce).sum() / total
    agree = (w * (jnp.argmax(logits, -1) == targets)).sum() / total
    return loss, {"loss": loss, "agree": agree}


def loss_windows(weights: np.ndarray) -> tuple[np.ndarray, int]:
    """weights [N, T] -> (starts int32 [N], window): row n's nonzero weights weights[n, 1:] lie in
    prediction positions starts[n] + [0, window), window the widest such span over all rows (>= 1)."""
    nz = weights[:, 1:] > 0  # [N, T-1]: prediction position t has target weight weights[:, t+1]
    any_nz = nz.any(1)
    first = np.where(any_nz, nz.argmax(1), 0)
    last = np.where(any_nz, nz.shape[1] - 1 - nz[:, ::-1].argmax(1), 0)
    window = int(max((last - first + 1)[any_nz].max(initial=1), 1))
    return first.astype(np.int32), window


@functools.lru_cache(maxsize=None)
def make_train_step(cfg: ModelConfig, tcfg: TrainConfig, window: int | None = None) -> Callable:
    """-> step(state, tokens [B, T], weights [B, T], starts [B]) -> (state, metrics), jitted, state
    donated; the loss covers prediction positions starts + [0, window) (all of them if window is None)."""
    tx = make_optimizer(tcfg)
    lr_at = schedule(tcfg)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state: TrainState, tokens, weights, starts):
        grads, metrics = jax.grad(loss_and_metrics, has_aux=True)(
            state.params, cfg, tokens, weights, None if window is None else starts, window)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, lr=lr_at(state.step), grad_norm=jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads))))
        return TrainState(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return step


def init_state(params, tcfg: TrainConfig) -> TrainState:
    params = jax.tree.map(lambda x: jnp.array(x, jnp.float32), params)
    return TrainState(params=params, opt_state=make_optimizer(tcfg).init(params), step=jnp.int32(0))


def batch_rows(num_rows: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """The row indices of batch `step` in the (seed)-determined stream of per-epoch permutations."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), num_rows)
        perm = np.random.default_rng([seed, epoch]).permutation(num_rows)
        out += perm[offset: offset + batch_size - len(out)].tolist()
    return np.asarray(out)


# ----------------------------------------------------------------------------- checkpoints


def save_state(directory: str | Path, state: TrainState, tcfg: TrainConfig) -> None:
    """params + opt state + step + data seed, written atomically (a kill leaves the previous one)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = jax.device_get(state)
    arrays = {f"p.{k}": np.asarray(v) for k, v in checkpoint.flatten(state.params).items()}
    arrays.update({f"o.{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state.opt_state))})
    tmp = directory / (".tmp-" + STATE_FILE)
    np.savez(tmp, **arrays)
    os.replace(tmp, directory / STATE_FILE)
    meta = {"step": int(state.step), "data_seed": tcfg.seed, "train_config": dataclasses.asdict(tcfg)}
    (directory / (".tmp-" + META_FILE)).write_text(json.dumps(meta, indent=2))
    os.replace(directory / (".tmp-" + META_FILE), directory / META_FILE)


def has_state(directory: str | Path) -> bool:
    return (Path(directory) / STATE_FILE).is_file() and (Path(directory) / META_FILE).is_file()


def load_state(directory: str | Path, template: TrainState, tcfg: TrainConfig) -> TrainState:
    """Restores a TrainState shaped like `template` (a freshly initialised one)."""
    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    if meta["train_config"] != dataclasses.asdict(tcfg):
        raise ValueError(f"{directory}: the saved training state is of another train config "
                         f"({meta['train_config']} vs {dataclasses.asdict(tcfg)})")
    with np.load(directory / STATE_FILE) as f:
        flat = {k[2:]: f[k] for k in f.files if k.startswith("p.")}
        opt_leaves = [f[f"o.{i}"] for i in range(len(jax.tree.leaves(template.opt_state)))]
    params = checkpoint.unflatten(flat, jax.tree.map(lambda x: x.shape, template.params,
                                                     is_leaf=lambda x: hasattr(x, "shape")))
    params = jax.tree.map(jnp.asarray, params)
    opt_state = jax.tree.unflatten(jax.tree.structure(template.opt_state), [jnp.asarray(x) for x in opt_leaves])
    return TrainState(params=params, opt_state=opt_state, step=jnp.int32(meta["step"]))


# ----------------------------------------------------------------------------- the loop


def train(params, cfg: ModelConfig, tokens: np.ndarray, weights: np.ndarray, tcfg: TrainConfig,
          state_dir: str | Path | None = None, resume: bool = False, stop_at: int | None = None,
          log: Callable[[str], None] | None = print, progress: bool = False) -> tuple[dict, list[dict]]:
    """Trains params on the rows of tokens [N, T] with a nonzero weight (weights [N, T]).

    state_dir: where the training state is checkpointed (every tcfg.checkpoint_every steps and at the
    end); resume: continue from the state there. stop_at: stop (and checkpoint) after this step, as a
    killed run would. Returns (params, history of logged metrics).
    """
    from tqdm import tqdm

    rows = np.flatnonzero(weights.sum(1) > 0)
    if len(rows) == 0:
        raise ValueError("no sample has a nonzero loss weight: nothing to train on")
    state = init_state(params, tcfg)
    if resume and state_dir is not None and has_state(state_dir):
        state = load_state(state_dir, state, tcfg)
    starts, window = loss_windows(weights)
    step_fn = make_train_step(cfg, tcfg, window if window < tokens.shape[1] - 1 else None)
    history: list[dict] = []
    start = int(state.step)
    end = tcfg.steps if stop_at is None else min(stop_at, tcfg.steps)
    bar = tqdm(range(start, end), desc="train", unit="step", disable=not progress)
    for s in bar:
        idx = rows[batch_rows(len(rows), s, tcfg.batch_size, tcfg.seed)]
        state, metrics = step_fn(state, jnp.asarray(tokens[idx]), jnp.asarray(weights[idx], jnp.float32),
                                 jnp.asarray(starts[idx]))
        if (s + 1) % tcfg.log_every == 0 or s + 1 == end or s == start:
            m = {k: float(v) for k, v in metrics.items()}
            m["step"] = s + 1
            history.append(m)
            if log:
                log(f"step {s + 1:5d}  loss {m['loss']:.4f}  agree {m['agree']:.3f}  lr {m['lr']:.2e}  "
                    f"|g| {m['grad_norm']:.2f}")
        if state_dir is not None and ((s + 1) % tcfg.checkpoint_every == 0 or s + 1 == end):
            save_state(state_dir, state, tcfg)
    return jax.device_get(state.params), history

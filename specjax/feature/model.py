"""A feature SSM: a small decoder that drafts from the LLM's own hidden features (EAGLE's idea).

At position i it reads the LLM's features f_i (the residual stream after a few tap layers, fused by
`fc`) and the LLM's embedding of the next token x_{i+1}, and predicts x_{i+2}:

    g_i = f_i @ fc                         [.., D]   (or, drafting deeper than the catch-up, the drafter's
                                                      own output o_{i-1}: it has no LLM feature there)
    x   = [g_i, embed(x_{i+1})] @ inp      [.., D]
    o_i = decoder layers(x)                [.., D]   (LLaMA layers, own KV cache, RoPE at position i)
    logits = norm(o_i) @ head              [.., V']  over the draft vocabulary

The head covers a draft vocabulary of V' tokens (the LLM's most frequent outputs, EOS always in):
`d2t` [V'] maps draft ids to the LLM's ids (EAGLE-3's d2t; FR-Spec's frequency-ranked subset). The
head starts as the LLM's embedding rows of those tokens and is trained.

A checkpoint is a directory: `feature_config.json` (this config, with the LLM it was trained for) and
`model.safetensors` (params, plus d2t). Loading one for another LLM (width, layer count, vocabulary,
fingerprint) is an error that names the mismatch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from specjax import model
from specjax.config import ModelConfig, RopeConfig

CONFIG_FILE = "feature_config.json"
WEIGHTS_FILE = "model.safetensors"
KIND = "feature_ssm"


class FeatureSSMError(ValueError):
    """A feature SSM that does not fit the LLM, or a checkpoint that is not one."""


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """layer: the drafter's decoder (hidden_size = the LLM's D; vocab_size = V', the draft vocabulary).
    taps: the LLM layers (0-based) whose outputs are fused. llm_*: the LLM it reads."""

    layer: ModelConfig
    taps: tuple[int, ...]
    llm_hidden: int
    llm_layers: int
    llm_vocab: int
    llm_fingerprint: str = ""

    @property
    def draft_vocab(self) -> int:
        return self.layer.vocab_size

    @property
    def feature_width(self) -> int:
        return len(self.taps) * self.llm_hidden

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["kind"] = KIND
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FeatureConfig":
        d = json.loads(text)
        if d.pop("kind", None) != KIND:
            raise FeatureSSMError(f"not a feature SSM config (kind must be {KIND!r})")
        d["layer"] = ModelConfig.from_dict(d["layer"])
        d["taps"] = tuple(d["taps"])
        return cls(**d)


def make_config(llm_cfg: ModelConfig, taps: tuple[int, ...], draft_vocab: int, num_layers: int = 1,
                intermediate: int | None = None, fingerprint: str = "") -> FeatureConfig:
    """A feature SSM as wide as the LLM (its heads and RoPE), `num_layers` layers."""
    if not taps or len(set(taps)) != len(taps) or min(taps) < 0 or max(taps) >= llm_cfg.num_layers:
        raise FeatureSSMError(f"taps {taps} must be distinct layers of the LLM's {llm_cfg.num_layers}")
    layer = ModelConfig(family="llama", vocab_size=draft_vocab, hidden_size=llm_cfg.hidden_size,
                        intermediate_size=intermediate or llm_cfg.intermediate_size, num_layers=num_layers,
                        num_heads=llm_cfg.num_heads, num_kv_heads=llm_cfg.num_kv_heads, head_dim=llm_cfg.head_dim,
                        max_position_embeddings=llm_cfg.max_position_embeddings, norm_eps=llm_cfg.norm_eps,
                        rope=llm_cfg.rope or RopeConfig(), final_norm=False, tie_word_embeddings=False)
    return FeatureConfig(layer=layer, taps=tuple(taps), llm_hidden=llm_cfg.hidden_size,
                         llm_layers=llm_cfg.num_layers, llm_vocab=llm_cfg.vocab_size, llm_fingerprint=fingerprint)


def check_fits(cfg: FeatureConfig, llm_cfg: ModelConfig, fingerprint: str | None = None,
               d2t: np.ndarray | None = None) -> None:
    """Raises FeatureSSMError naming what differs between the LLM the drafter reads and this one (and,
    given d2t, an end-of-sequence token the draft vocabulary lacks: it could never propose stopping)."""
    if llm_cfg.family != "llama":
        raise FeatureSSMError(f"a feature SSM needs a LLaMA-family LLM, not {llm_cfg.family!r}")
    for what, mine, theirs in (("hidden size", cfg.llm_hidden, llm_cfg.hidden_size),
                               ("layer count", cfg.llm_layers, llm_cfg.num_layers),
                               ("vocabulary", cfg.llm_vocab, llm_cfg.vocab_size)):
        if mine != theirs:
            raise FeatureSSMError(f"this feature SSM was made for an LLM with {what} {mine}, the LLM has {theirs}")
    if max(cfg.taps) >= llm_cfg.num_layers:
        raise FeatureSSMError(f"feature SSM taps {cfg.taps} exceed the LLM's {llm_cfg.num_layers} layers")
    if fingerprint and cfg.llm_fingerprint and fingerprint != cfg.llm_fingerprint:
        raise FeatureSSMError(f"this feature SSM was trained on another LLM's features (fingerprint "
                              f"{cfg.llm_fingerprint}, this LLM {fingerprint})")
    if d2t is not None:
        missing = sorted(set(llm_cfg.eos_token_ids) - set(np.asarray(d2t).tolist()))
        if missing:
            raise FeatureSSMError(f"the feature SSM's draft vocabulary lacks the LLM's end-of-sequence token(s) {missing}")


def init_params(cfg: FeatureConfig, key, llm_embed: np.ndarray | None = None, d2t: np.ndarray | None = None,
                std: float = 0.02) -> dict:
    """Random layers; the head from the LLM's embedding rows of the draft vocabulary when given."""
    D = cfg.layer.hidden_size
    k1, k2, k3, k4 = jax.random.split(key, 4)
    layers = model.init_params(cfg.layer, k1, std=std)["layers"]
    if llm_embed is not None and d2t is not None:
        head = jnp.asarray(np.asarray(llm_embed)[np.asarray(d2t)].T, jnp.float32)
    else:
        head = std * jax.random.normal(k4, (D, cfg.draft_vocab))
    return {"fc": std * jax.random.normal(k2, (cfg.feature_width, D)),
            "inp": std * jax.random.normal(k3, (2 * D, D)),
            "layers": layers, "final_norm": {"scale": jnp.ones((D,))}, "head": head}


# ----------------------------------------------------------------------------- the forward


def fuse(params, feats):
    """LLM features [.., len(taps) * D] -> g [.., D]."""
    return model.dense(feats.astype(jnp.float32), params["fc"])


def inputs(params, g, emb):
    """g [.., D] (fused features or the drafter's own output) and the next token's LLM embedding [.., D]."""
    return model.dense(jnp.concatenate([g, emb.astype(g.dtype)], axis=-1), params["inp"])


def step(params, cfg: FeatureConfig, g, emb, positions, cache: model.KVCache, slots, mask):
    """One cached forward (drafting): (o [B, T, D] the output before the final norm, cache)."""
    o, cache, _ = model.decode(params, cfg.layer, inputs(params, g, emb), positions, cache, slots, mask)
    return o, cache


def logits(params, cfg: FeatureConfig, o):
    """o [.., D] -> logits over the draft vocabulary [.., V'] (float32)."""
    return model.dense(model.norm(params["final_norm"], o, cfg.layer), params["head"]).astype(jnp.float32)


def init_cache(cfg: FeatureConfig, batch: int, num_slots: int, dtype=jnp.float32) -> model.KVCache:
    return model.init_cache(cfg.layer, batch, num_slots, dtype)


# ----------------------------------------------------------------------------- training-time test


def ttt_mask(T: int, s: int, first: int = 0) -> np.ndarray:
    """[T - first, T + (s - 1) * (T - first)] bool (s = 1: [T, T]): what pass s (1-based) at position i
    sees of pass 1 (all T positions) and of the passes 2..s (positions first..T-1, as run by ttt_outputs
    with `first`).

    Pass s at position i is a depth-(s-1) draft node whose root is at i - s + 2: it sees pass 1 (the
    real features) up to i - s + 1 and, of each later pass r, only its ancestor at i - s + r."""
    first = 0 if s == 1 else first
    i = np.arange(first, T)[:, None]
    j = np.arange(T)[None, :]
    jt = np.arange(first, T)[None, :]
    blocks = [j <= i - s + 1] + [jt == i - s + r for r in range(2, s + 1)]
    return np.concatenate(blocks, axis=1)


def _attend_train(lp, cfg: ModelConfig, h, positions, prev_k, prev_v, mask):
    """Attention of one pass over its own and earlier passes' keys. h [B, T, D]; prev_* [B, X, K, A];
    mask [T, X + T] or per row [B, T, X + T]."""
    B, T, D = h.shape
    H, K, A = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q, k, v = model.dense(h, lp["q"], D), model.dense(h, lp["k"], D), model.dense(h, lp["v"], D)
    q, k, v = q.reshape(B, T, H, A), k.reshape(B, T, K, A), v.reshape(B, T, K, A)
    inv_freq = jnp.asarray(model.rope_inv_freq(cfg.rope, A))
    q, k = model.apply_rope(q, positions, inv_freq), model.apply_rope(k, positions, inv_freq)
    ks = jnp.concatenate(prev_k + [k], axis=1)  # [B, sT, K, A]
    vs = jnp.concatenate(prev_v + [v], axis=1)
    G = H // K
    qg = q.reshape(B, T, K, G, A)
    s = jnp.einsum("btkga,bxka->bkgtx", qg, ks) / np.sqrt(A)
    s = jnp.where(mask[:, None, None] if mask.ndim == 3 else mask[None, None, None], s, -1e30)
    w = jax.nn.softmax(s, axis=-1)
    out = jnp.einsum("bkgtx,bxka->btkga", w, vs).reshape(B, T, H * A)
    return model.dense(out, lp["o"], H * A), k, v


def ttt_outputs(params, cfg: FeatureConfig, feats, emb, passes: int, first: int = 0, valid=None):
    """Outputs o of every pass over a teacher-forced sequence: feats [B, T, F] (the LLM's, positions
    0..T-1), emb [B, T, D] (the LLM's embedding of tokens 1..T). Pass 1 reads the real features; pass
    s > 1 at position i reads pass s-1's output at i - 1, as drafting at depth s - 1 does.

    first: passes 2..s run on positions first..T-1 only (training reads them on a window there: the
    positions before it are context for pass 1, and running later passes over them is wasted work).
    Pass s at i >= first + s - 2 equals the full computation; earlier ones lack ancestors below first.
    valid [B, T] bool: positions that exist (a left-padded row's padding is never attended to).
    Returns [passes]: pass 1 [B, T, D], passes 2.. [B, T - first, D]."""
    B, T, _ = feats.shape
    lcfg = cfg.layer
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    prev = [([], []) for _ in params["layers"]]
    outs = []
    g = fuse(params, feats)
    for s in range(1, passes + 1):
        if s > 1:
            last = outs[-1] if s > 2 else outs[-1][:, first:]  # [B, T - first, D]
            g = jnp.concatenate([outs[0][:, first - 1: first] if s == 2 and first > 0 else jnp.zeros_like(last[:, :1]),
                                 last[:, :-1]], axis=1)
        f = 0 if s == 1 else first
        x = inputs(params, g, emb[:, f:])
        mask = jnp.asarray(ttt_mask(T, s, first))
        if valid is not None:  # padding keys: pass 1's (the only ones below first that a pass reads)
            mask = mask[None] & jnp.pad(valid, ((0, 0), (0, mask.shape[1] - T)), constant_values=True)[:, None, :]
        for l, lp in enumerate(params["layers"]):
            h = model.norm(lp["attn_norm"], x, lcfg)
            a, k, v = _attend_train(lp, lcfg, h, positions[:, f:], prev[l][0], prev[l][1], mask)
            prev[l][0].append(k)
            prev[l][1].append(v)
            x = x + a
            x = x + model.mlp(lp, model.norm(lp["mlp_norm"], x, lcfg), lcfg)
        outs.append(x)
    return outs


# ----------------------------------------------------------------------------- checkpoints


def save(directory: str | Path, params: dict, cfg: FeatureConfig, d2t: np.ndarray, dtype=np.float16) -> Path:
    """Writes the checkpoint (weights stored as `dtype`; float16 halves what ships)."""
    from safetensors.numpy import save_file

    from specjax import checkpoint

    d2t = np.asarray(d2t, np.int32)
    if d2t.shape != (cfg.draft_vocab,) or d2t.min() < 0 or d2t.max() >= cfg.llm_vocab:
        raise FeatureSSMError(f"d2t must map {cfg.draft_vocab} draft ids to LLM ids < {cfg.llm_vocab}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v, dtype) for k, v in checkpoint.flatten(jax.device_get(params)).items()}
    flat["d2t"] = d2t
    save_file(flat, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(cfg.to_json())
    for path in (directory, directory / WEIGHTS_FILE, directory / CONFIG_FILE):
        checkpoint.make_readable(path)  # safetensors writes 0600: a shipped file must be readable by all
    return directory


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def load(directory: str | Path, llm_cfg: ModelConfig | None = None, fingerprint: str | None = None):
    """(params (float32), cfg, d2t) of a saved feature SSM; checked against the LLM when given."""
    from safetensors.numpy import load_file

    from specjax import checkpoint

    directory = Path(directory)
    if not is_checkpoint(directory):
        raise FeatureSSMError(f"{directory} is not a feature SSM checkpoint ({CONFIG_FILE} missing)")
    cfg = FeatureConfig.from_json((directory / CONFIG_FILE).read_text())
    flat = load_file(str(directory / WEIGHTS_FILE))
    if "d2t" not in flat:
        raise FeatureSSMError(f"{directory}: no d2t tensor (the draft vocabulary)")
    d2t = np.asarray(flat.pop("d2t"), np.int32)
    if llm_cfg is not None:
        check_fits(cfg, llm_cfg, fingerprint, d2t)
    template = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    shapes = jax.tree.map(lambda x: x.shape, template)
    expected = checkpoint.flatten(shapes)
    for k, shape in expected.items():
        if k not in flat or tuple(flat[k].shape) != tuple(shape):
            got = None if k not in flat else tuple(flat[k].shape)
            raise FeatureSSMError(f"{directory}: tensor {k} has shape {got}, the config says {tuple(shape)}")
    params = checkpoint.unflatten({k: np.asarray(flat[k], np.float32) for k in expected}, shapes)
    if d2t.shape != (cfg.draft_vocab,) or d2t.min() < 0 or d2t.max() >= cfg.llm_vocab:
        raise FeatureSSMError(f"{directory}: d2t must map {cfg.draft_vocab} draft ids to LLM ids < {cfg.llm_vocab}")
    return jax.tree.map(jnp.asarray, params), cfg, d2t

"""SSM configs and initialisation.

An SSM is a small LLaMA-style decoder (`ModelConfig(family="llama")`, tied embeddings) that shares the
LLM's vocabulary, special ids and RoPE base, so `specjax generate --ssm` and `checkpoints_convert --to-hf`
take it as is. Its size comes from a preset name or a JSON file of ModelConfig fields that override
the "tiny" preset (vocab_size, when given, must equal the LLM's).

Initialisation (`init_ssm_params`, init="llm"): the SSM's tied embedding [V, D] starts from the LLM's
embedding [V, E]: copied when D == E, else projected onto its top-D principal directions
(`embed @ W`, W [E, D] the leading right singular vectors of the embedding, rescaled to the LLM's
per-entry RMS). The projection is applied once at init, so the SSM stays a plain LLaMA (no project_in/out)
and exports to Hugging Face. The rest is random (std 0.02). init="random": everything random.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from specjax import model
from specjax.boost import BoostError
from specjax.config import ConfigError, ModelConfig

# name -> (D, L, H, K, A, F)
PRESETS = {
    "micro": (32, 1, 2, 1, 16, 64),  # tests
    "tiny": (128, 2, 4, 2, 32, 384),
    "base": (96, 4, 3, 1, 32, 288),  # the default ensemble's drafters: 5.2M params, 10 MB in bf16
    "small": (256, 4, 4, 2, 64, 768),
}


def ssm_config(spec: str, llm_cfg: ModelConfig, source: str | None = None) -> ModelConfig:
    """A preset name, a JSON config file or JSON text -> the SSM's ModelConfig for this LLM.
    source: how errors name a JSON text (e.g. the file it was read from)."""
    if spec in PRESETS:
        overrides: dict = {}
        base = PRESETS[spec]
    else:
        is_text = spec.lstrip().startswith("{")
        path = source or ("--ssm-config" if is_text else spec)
        if not is_text and not Path(spec).is_file():
            raise BoostError(f"--ssm-config {spec!r}: not a preset ({', '.join(PRESETS)}) nor a JSON file")
        try:
            overrides = json.loads(spec if is_text else Path(spec).read_text())
        except json.JSONDecodeError as e:
            raise BoostError(f"{path}: not valid JSON ({e.msg})") from None
        if not isinstance(overrides, dict):
            raise BoostError(f"{path}: expected a JSON object of ModelConfig fields")
        base = PRESETS["tiny"]
        if overrides.get("vocab_size", llm_cfg.vocab_size) != llm_cfg.vocab_size:
            raise BoostError(f"{path}: SSM vocab_size={overrides['vocab_size']} differs from the LLM's "
                             f"vocab_size={llm_cfg.vocab_size}: an SSM must share the LLM's vocabulary")
        if overrides.get("family", "llama") != "llama":
            raise BoostError(f"{path}: SSMs are llama-family decoders, got family={overrides['family']!r}")
    D, L, H, K, A, F = base
    fields = dict(family="llama", vocab_size=llm_cfg.vocab_size, hidden_size=D, intermediate_size=F,
                  num_layers=L, num_heads=H, num_kv_heads=K, head_dim=A,
                  max_position_embeddings=llm_cfg.max_position_embeddings, norm_eps=1e-5,
                  tie_word_embeddings=True, rope=llm_cfg.rope if llm_cfg.uses_rope else None,
                  bos_token_id=llm_cfg.bos_token_id, eos_token_ids=llm_cfg.eos_token_ids,
                  pad_token_id=llm_cfg.pad_token_id)
    fields.update(overrides)
    if fields.get("rope") is None:
        from specjax.config import RopeConfig

        fields["rope"] = RopeConfig()
    try:
        cfg = ModelConfig.from_dict({**fields, "rope": dataclasses.asdict(fields["rope"])
                                     if not isinstance(fields["rope"], dict) else fields["rope"]})
    except (ConfigError, TypeError) as e:
        raise BoostError(f"--ssm-config {spec}: {e}") from None
    if cfg.projects_embeddings:
        raise BoostError(f"--ssm-config {spec}: SSMs have no embed_dim projection")
    return cfg


def project_embedding(embed: np.ndarray, width: int) -> np.ndarray:
    """embed [V, E] -> [V, width]: the coordinates on its top-`width` right singular vectors, rescaled
    to embed's per-entry RMS. width == E: embed itself."""
    embed = np.asarray(embed, np.float32)
    if width == embed.shape[1]:
        return embed.copy()
    if width > embed.shape[1]:
        raise BoostError(f"SSM hidden_size={width} exceeds the LLM's embedding width {embed.shape[1]}")
    gram = embed.T.astype(np.float64) @ embed  # [E, E]
    _, vecs = np.linalg.eigh(gram)  # ascending eigenvalues
    w = vecs[:, ::-1][:, :width].astype(np.float32)  # [E, width]
    out = embed @ w
    return out * (np.sqrt((embed ** 2).mean()) / max(np.sqrt((out ** 2).mean()), 1e-12))


def init_ssm_params(cfg: ModelConfig, key, llm_params=None, init: str = "llm") -> dict:
    """Random params (std 0.02); init="llm" sets the embedding from llm_params["embed"] (see module doc)."""
    if init not in ("llm", "random"):
        raise BoostError(f"unknown SSM init {init!r} (expected 'llm' or 'random')")
    params = model.init_params(cfg, key, std=0.02)
    if init == "llm":
        embed = np.asarray(llm_params["embed"], np.float32)
        if embed.shape[0] != cfg.vocab_size:
            raise BoostError(f"LLM vocab {embed.shape[0]} != SSM vocab_size {cfg.vocab_size}")
        params["embed"] = jnp.asarray(project_embedding(embed, cfg.hidden_size))
        if not cfg.tie_word_embeddings:
            params["lm_head"] = params["embed"].T
    return jax.tree.map(jnp.asarray, params)

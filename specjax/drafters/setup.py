"""Host-side set-up of the drafters: names -> static configs, budget checks, the LLM prefill that
also reads the recycling drafter's first successors and the feature drafter's features."""

from __future__ import annotations

from typing import Sequence

import jax

from specjax import model
from specjax.config import ModelConfig
from specjax.decode_state import causal_mask
from specjax.drafters import DrafterError, KINDS, acceptance, feature, lookup, recycle, ssm

AUTO_SSM_EXPANSION = (3, 1, 1, 1)  # the SSMs' expansion under --tree auto (the budget prunes it)
RECYCLE_EXPANSION = (3, 1, 1, 1)  # the simulation: 1.50 MAT alone on Spec-Bench
# The feature SSM's tree (the budget prunes it): EAGLE-2's dynamic tree, the 4 most probable nodes of
# each level get 4 children each (36 nodes, 4 rows a drafter forward). Feature + lookup at budget 8 on
# the 16 held-out prompts: MAT 2.683 vs 2.580 with the static <3,1,1,1>; deeper or wider trees gave no
# more at budgets 4 and 8 (docs/benchmarks.md, 2026-12-07 evening). Depth 3, not 4: the same MAT at
# budget 8 (2.543 vs 2.551 on 8 held-out prompts) for one drafter forward and head less, a step 2.1%
# cheaper, 1.8% more tokens/s (docs/experiments/tree-depth/depth_ab.py, 2026-12-07 night).
FEATURE_EXPANSION = (4, 4, 4)
FEATURE_FRONTIER = 4  # nodes of a level that get children (feature.Config.frontier); None: all
# The positions the feature SSM attends to (feature.Config.window): its training samples are 256
# positions long (specjax.feature.train.TrainConfig.crop), so it never learnt to read further back.
# On Spec-Bench's 6 longest prompts (1,343-1,598 tokens) MAT is the same with and without it (feature +
# lookup budget 8: 2.122 vs 2.127, alone 1.567 vs 1.564), and a long prompt's drafter prefill runs 256
# positions instead of all of them (docs/experiments/drafter-window/).
FEATURE_WINDOW = 256
FEATURE_CONFIDENCE = True  # greedy: the budget ranks its nodes by its own path probability (feature.Config)
LOOKUP_LENGTH = 8  # a copy once right goes on: 8 nodes, the budget keeps what its match length earns
LOOKUP_NGRAM = 8  # matched length = confidence: 22% (1 token) to 94% (8) first-token acceptance


def build_drafters(spec: Sequence | None, llm_cfg: ModelConfig, ssm_cfgs: tuple, tree,
                   feature_cfg=None) -> tuple:
    """Drafter configs from names or configs. 'ssm' expands to one drafter per SSM (the tree's
    expansion); 'feature' needs the feature SSM's config (feature.model.FeatureConfig). None means
    every SSM given and the feature SSM if any (the engine's behaviour before drafters had kinds)."""
    if spec is None:
        spec = (("ssm",) if ssm_cfgs else ()) + (("feature",) if feature_cfg is not None else ())
    if isinstance(spec, str):
        from specjax.drafters import parse_names

        spec = parse_names(spec)
    out = []
    for item in spec:
        if not isinstance(item, str):
            out.append(item)
            continue
        if item not in KINDS:
            raise DrafterError(f"unknown drafter {item!r}: known drafters are {', '.join(KINDS)}")
        if item == "ssm":
            if not ssm_cfgs:
                raise DrafterError("drafter 'ssm' needs at least one SSM (--ssm DIR)")
            if tree is None:
                raise DrafterError("drafter 'ssm' needs a TreeConfig (the SSMs' expansion)")
            out += [ssm.Config(model=c, expansion=tree.expansion, index=i, rates=acceptance.rates(f"ssm{i}", "ssm"))
                    for i, c in enumerate(ssm_cfgs)]
        elif item == "feature":
            if feature_cfg is None:
                raise DrafterError("drafter 'feature' needs a feature SSM (--feature-ssm DIR)")
            out.append(feature.Config(model=feature_cfg, expansion=FEATURE_EXPANSION, frontier=FEATURE_FRONTIER,
                                      rates=acceptance.rates("feature", "feature"), confidence=FEATURE_CONFIDENCE,
                                      window=FEATURE_WINDOW))
        elif item == "recycle":
            k = min(recycle.DEFAULT_K, llm_cfg.vocab_size)
            out.append(recycle.Config(vocab_size=llm_cfg.vocab_size, k=k,
                                      expansion=tuple(min(e, k) for e in RECYCLE_EXPANSION),
                                      rates=acceptance.rates("recycle", "recycle")))
        else:
            out.append(lookup.Config(length=LOOKUP_LENGTH, max_ngram=LOOKUP_NGRAM,
                                     rates=acceptance.rates("lookup", "lookup")))
    names = [d.name for d in out]
    if len(set(names)) != len(names):
        raise DrafterError(f"drafters {names} name one drafter twice")
    return tuple(out)


def check_budget(budget, max_len, slot_limit) -> None:
    """--budget N: N >= 1 candidate nodes per step, and the step (root + N nodes) must fit the cache."""
    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise DrafterError(f"--budget must be an integer >= 1 (candidate nodes verified per step), got {budget!r}")
    room = budget + 1
    for limit, why in ((max_len, f"max_len={max_len} cache slots"),
                       (None if slot_limit is None else slot_limit[0], None if slot_limit is None else slot_limit[1])):
        if limit is not None and room > limit:
            raise DrafterError(f"--budget {budget} needs {room} cache slots per step (the root and {budget} nodes), "
                               f"more than {why} allow: use a budget of at most {limit - 1}")


def prefill_successors(params, cfg: ModelConfig, cache, tokens, prompt_len, bucket: int, k: int):
    """decode_state.prefill that also returns the LLM's top-k next tokens at every prefilled
    position: ([cache], successors [B, bucket, k] int32; rows past P-2 are not real)."""
    cache, top, _ = prefill_outputs(params, cfg, cache, tokens, prompt_len, bucket, k, ())
    return cache, top


def prefill_outputs(params, cfg: ModelConfig, cache, tokens, prompt_len, bucket: int, k: int, taps: tuple):
    """decode_state.prefill (one call) that also returns what drafters read at every prefilled
    position: (cache, successors [B, bucket, k] int32 or None (k = 0), features [B, bucket,
    len(taps) * D] or None (taps = ()): the residual streams after the layers `taps`, layer order).
    Positions past P-2 are not real."""
    B, S = tokens.shape
    t = jax.numpy.broadcast_to(jax.numpy.arange(bucket), (B, bucket))
    real = t < (prompt_len - 1)[:, None]
    slots = jax.numpy.where(real, t, S)
    args = (params, cfg, tokens[:, :bucket], t, cache, slots, causal_mask(t, S))
    if taps:
        hidden, cache, feats = model.forward_features(*args, taps)
    else:
        (hidden, cache), feats = model.forward(*args), None
    top = None
    if k:
        _, top = jax.lax.top_k(model.lm_head(params, cfg, hidden), k)
        top = top.astype(jax.numpy.int32)
    return cache, top, feats

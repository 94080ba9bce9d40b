"""Drafters: what proposes the token tree each speculative step (see drafters.base for the interface).

    ssm      an SSM expands a tree over its own cache (SpecInfer's drafting)
    recycle  token recycling: each token's latest top-k successors from the LLM's own logits
    lookup   prompt lookup: the continuation of the longest suffix n-gram found earlier in the request
    feature  a feature SSM (EAGLE-style) drafts from the LLM's own hidden features

drafters.merge puts any mix into one tree (optionally with a node budget).
"""

from __future__ import annotations

from specjax.drafters import feature, lookup, recycle, ssm

KINDS = {"ssm": ssm, "recycle": recycle, "lookup": lookup, "feature": feature}


class DrafterError(ValueError):
    """A drafter list or setting that cannot be served."""


def module(cfg):
    """The module implementing a drafter config's kind."""
    return KINDS[cfg.kind]


def parse_names(text: str) -> tuple[str, ...]:
    """'ssm,recycle,lookup' -> ('ssm', 'recycle', 'lookup'); unknown or repeated names are refused."""
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    if not names:
        raise DrafterError(f"--drafters {text!r}: give a comma list of {', '.join(KINDS)}")
    bad = [n for n in names if n not in KINDS]
    if bad:
        raise DrafterError(f"unknown drafter {bad[0]!r} in --drafters {text!r}: known drafters are "
                           f"{', '.join(KINDS)}")
    if len(set(names)) != len(names):
        raise DrafterError(f"--drafters {text!r} names a drafter twice")
    return names

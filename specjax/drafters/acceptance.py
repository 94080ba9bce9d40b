"""Acceptance statistics shipped with the drafters: the calibration of their path scores.

rates[d-1][r] = P(a drafter's node at depth d, rank r, is accepted | its parent was), measured with
the engine on the default LLM (scripts/measure_acceptance.py writes acceptance.json). For `lookup`
the second index is the matched n-gram length minus one instead of a rank. A node's path score is
the product of the rates along its path, an estimate of its probability of being accepted, so the
scores of different drafters are comparable and the budgeted merge keeps the nodes worth verifying.

Depths or ranks past the table's use its last entry. A drafter without measured rates uses PRIORS.

Under sampling a node is accepted far less often than its greedy statistics say (the LLM's sampled
token differs from its argmax), so the file may also hold a "sampled" section: node acceptances and
merged MATs measured the same way at one temperature (`measure_acceptance.py --temperature 0.7`). The
automatic choice reads it for sampled decoding (any temperature > 0: at 0.7 it is far closer than
greedy's); the path scores' rates stay greedy (they rank nodes, which sampling does not reorder much).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

SHIPPED = Path(__file__).with_name("acceptance.json")
SAMPLED = "sampled"  # the file's section measured under sampling

# Used only where acceptance.json has no entry (e.g. a user's own SSMs).
PRIORS = {
    "ssm": ((0.35, 0.08, 0.04), (0.5, 0.1, 0.05)),
    "recycle": ((0.3, 0.08, 0.04), (0.4, 0.08, 0.04)),
    # [depth][matched n - 1]: the default LLM's held-out greedy outputs (lookup.measure_rates, 13k roots)
    "lookup": ((0.22, 0.53, 0.66, 0.71, 0.74, 0.77, 0.82, 0.94), (0.59, 0.66, 0.71, 0.76, 0.78, 0.85, 0.87, 0.94),
               (0.69, 0.71, 0.78, 0.78, 0.85, 0.88, 0.86, 0.95), (0.72, 0.79, 0.78, 0.85, 0.87, 0.85, 0.90, 0.95)),
    "feature": ((0.6, 0.15, 0.08), (0.7, 0.15, 0.08)),
}


@functools.lru_cache(maxsize=None)
def _shipped() -> dict:
    if not SHIPPED.is_file():
        return {}
    return json.loads(SHIPPED.read_text())


def section(sampled: bool = False) -> dict:
    """The shipped statistics for greedy decoding, or for sampled decoding where the file has them
    (else the greedy ones)."""
    shipped = _shipped()
    return (shipped.get(SAMPLED) or shipped) if sampled else shipped


def sampled_temperature() -> float | None:
    """The temperature the shipped sampled statistics were measured at, or None when there are none."""
    s = _shipped().get(SAMPLED)
    return float(s["temperature"]) if s else None


def rates(name: str, kind: str) -> tuple[tuple[float, ...], ...]:
    """The shipped rates of drafter `name` (ssm0, ssm1, recycle, lookup, feature), else its kind's prior."""
    table = _shipped().get("rates", {}).get(name)
    if not table:
        return PRIORS[kind]
    return tuple(tuple(float(x) for x in row) for row in table)


def rate_fn(table):
    """(depth, rank) -> rate, clamped to the table."""
    def rate(depth: int, rank: int) -> float:
        row = table[min(depth, len(table)) - 1]
        return float(row[min(rank, len(row) - 1)])
    return rate


def from_hits(hits, topology, steps: int) -> list[list[float]]:
    """Measured rates [depth][rank] from hits [n] (how often each local node's sequence was accepted)
    over `steps` verified steps: sum of hits / sum of the parents' hits, per (depth, rank)."""
    import numpy as np

    hits = np.asarray(hits, np.float64)
    num = np.zeros((topology.max_depth, int(topology.rank.max()) + 1))
    den = np.zeros_like(num)
    for j in range(topology.num_nodes):
        d, r, p = int(topology.depth[j]) - 1, int(topology.rank[j]), int(topology.parents[j])
        num[d, r] += hits[j]
        den[d, r] += steps if p < 0 else hits[p]
    out = np.where(den > 0, num / np.maximum(den, 1), 0.0)
    return [[round(float(x), 4) for x in row] for row in out]


def node_acceptance(name: str, num_nodes: int, sampled: bool = False):
    """Shipped P(local node j accepted) per step [n] for drafter `name` at its shipped shape, or
    None when not shipped (or shipped for another shape)."""
    import numpy as np

    row = section(sampled).get("node_acceptance", {}).get(name)
    if row is None or len(row) != num_nodes:
        return None
    return np.asarray(row, np.float64)


def merged_mat(names, sampled: bool = False) -> dict[int, float] | None:
    """Measured MAT {budget: MAT} of drafters `names` merged (greedy, or sampled), from the shipped file's "merged"
    table (scripts/measure_acceptance.py --merged, keyed in the engine order it measured), or None.
    Any order of the same names finds it: the budget keeps each step's best nodes whichever drafter
    comes first (`specjax bench` lists them recycle, lookup, feature and was estimating instead)."""
    merged = section(sampled).get("merged", {})
    row = merged.get("+".join(names)) or next(
        (r for key, r in merged.items() if sorted(key.split("+")) == sorted(names)), None)
    return None if not row else {int(n): float(m) for n, m in row.items()}


def only_measured_mixes(names, sampled: bool = False) -> bool:
    """Whether a mix of drafters `names` is to be taken only as measured: when the shipped statistics
    hold measured mixes and every member's own acceptance. The overlap factor fitted on other mixes
    over-promises for members that propose the same tokens (under sampling, ssm0 + feature + lookup at
    budget 8 was estimated at 1.93 tokens a step and ran at 1.47-1.54, where the measured feature +
    lookup gives 1.70); drafters the file does not know (a user's own SSMs) are still estimated."""
    sec = section(sampled)
    nodes = sec.get("node_acceptance", {})
    return bool(sec.get("merged")) and all(n in nodes for n in names)


@functools.lru_cache(maxsize=None)
def overlap_factor(sampled: bool = False) -> float:
    """How much of the summed node acceptances of merged drafters a mix really gains: the median over
    the shipped measured mixes of (measured MAT - 1) / (the sum of the budget's best node acceptances
    of its members), at most 1. Drafters that merge propose the same easy tokens, which a sum counts
    twice; but the budget picks each step's best nodes by their live scores (lookup's depend on its
    match), which a sum of averages misses: measured on the default drafters, the ratio runs from
    0.8 (recycle+lookup, budget 8) to 1.9 (feature+lookup, budget 1). 1.0 when nothing is shipped."""
    import numpy as np

    shipped = section(sampled)
    nodes = shipped.get("node_acceptance", {})
    ratios = []
    for key, row in shipped.get("merged", {}).items():
        members = key.split("+")
        if not all(m in nodes for m in members):
            continue
        pool = np.sort(np.concatenate([np.asarray(nodes[m], np.float64) for m in members]))[::-1]
        for n, mat in row.items():
            s = float(pool[: int(n)].sum())
            if s > 0:
                ratios.append((float(mat) - 1.0) / s)
    return float(np.clip(np.median(ratios), 0.0, 1.0)) if ratios else 1.0

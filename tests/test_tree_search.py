"""Tree-shape search (specjax.tree_search): its arithmetic on known numbers, and a ranking that follows
the cost curve (cheap verification favours wide trees, steep verification favours short chains)."""

import pytest

from specjax.tree_search import Costs, expected_tokens, level_widths, search, step_seconds


def test_expected_tokens_and_widths():
    cov = [0.5, 0.7, 0.8]
    assert level_widths((1, 3, 2)) == [1, 3, 6]
    assert expected_tokens((), cov) == 1.0
    assert expected_tokens((1, 1), cov) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens((3, 1), cov) == pytest.approx(1 + 0.8 + 0.8 * 0.5)
    assert expected_tokens((4,), cov) == pytest.approx(1.8)  # k beyond the measured top-k: the last one


def test_costs_interpolate_and_extrapolate():
    c = Costs((1, 4), (1.0, 2.0), (1, 2, 4), (10.0, 12.0, 16.0))
    assert c.draft(2.5) == pytest.approx(1.5) and c.draft(7) == pytest.approx(3.0)
    assert c.verify(3) == pytest.approx(14.0) and c.verify(8) == pytest.approx(24.0)
    # a step: catch-up read of m+1 tokens, levels 1..m-1 (widths 1, 2), verification of 1 + 2 * 9 tokens
    exp = (1, 2, 3)
    expected = 2 * (c.draft(4) + c.draft(1) + c.draft(2)) + c.verify(1 + 2 * 9)
    assert step_seconds(exp, 2, c) == pytest.approx(expected)


def test_search_follows_the_cost_curve():
    cov = [0.6, 0.75, 0.85]
    flat = Costs((1, 100), (0.0, 0.0), (1, 100), (1.0, 1.0))  # free drafting, verification of any size free
    steep = Costs((1, 100), (0.05, 0.05), (1, 100), (1.0, 100.0))  # every tree token costs a full step
    best_flat = search(cov, flat, max_depth=4, max_branch=3, node_budget=200)[0]
    assert best_flat["expansion"] == (3, 3, 3, 3)  # more candidates are free: the widest, deepest tree
    ranked = search(cov, steep, max_depth=4, max_branch=3)
    assert ranked[0]["expansion"] == (1,)  # a second tree token costs as much as it can gain
    assert all(r["nodes"] <= 64 for r in ranked)
    r = ranked[0]
    assert r["speedup"] == pytest.approx(r["expected_tokens"] / r["step_seconds"] * steep.verify(1))
    assert len(search(cov, flat, num_ssms=2, max_depth=3, node_budget=8)) == sum(
        1 for r in search(cov, flat, max_depth=3, node_budget=200) if 2 * r["nodes"] <= 8)


def test_catch_up_charges_the_head_once_and_bad_inputs():
    c = Costs((1, 9), (1.0, 5.0), (1, 2), (10.0, 11.0), draft_body_seconds=(0.2, 1.0))
    assert c.catch_up(9) == pytest.approx(1.0 + 1.0 - 0.2)  # body over 9 tokens + the head once
    with pytest.raises(ValueError, match="increasing"):
        Costs((4, 1), (1.0, 2.0), (1,), (1.0,))
    with pytest.raises(ValueError, match="coverage"):
        search([], c)

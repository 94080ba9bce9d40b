"""Kept for callers of the old module: SSM drafting lives in specjax.drafters.ssm."""

from specjax.drafters.ssm import catch_up, draft_tree, level_mask  # noqa: F401

"""MAT of the shipped feature SSM alone with another tree shape than the default (FEATURE_EXPANSION),
on measure_acceptance's held-out prompts (48), greedy, 96 tokens; nothing written. docs/benchmarks.md.
Every node of the expansion gets children unless a frontier is given (EAGLE-2's dynamic tree).

    python scripts/measure_feature_chain.py 3,1,1,1,1 [FRONTIER]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from specjax.drafters import setup  # noqa: E402

try:
    setup.FEATURE_EXPANSION = tuple(int(x) for x in sys.argv[1].split(","))
    assert setup.FEATURE_EXPANSION and min(setup.FEATURE_EXPANSION) >= 1
    setup.FEATURE_FRONTIER = int(sys.argv[2]) if len(sys.argv) > 2 else None
    assert setup.FEATURE_FRONTIER is None or setup.FEATURE_FRONTIER >= 1
except (IndexError, ValueError, AssertionError):
    sys.exit("measure_feature_chain.py: give the expansion as positive integers separated by commas, e.g. 3,1,1,1,1, "
             "and optionally a frontier >= 1")
import measure_acceptance  # noqa: E402

measure_acceptance.main(["--count", "48", "--only", "feature"])

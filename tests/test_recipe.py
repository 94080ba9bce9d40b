"""scripts/train_default_ssms.py, the recipe for the shipped drafters: its feature stages are commands
that scripts/train_feature_ssm.py accepts (each dispatched to the stage it names, in order), a bad
--members is refused, and a failing stage stops the recipe with a message that says how to resume.
(The stages themselves need the embedded LLM and hours: measured in docs/benchmarks.md.)"""

import importlib
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module("train_default_ssms"), importlib.import_module("train_feature_ssm")
    finally:
        sys.path.remove(str(SCRIPTS))


def test_feature_stages_are_commands_train_feature_ssm_runs(scripts, monkeypatch, tmp_path):
    recipe, tf = scripts
    ran = []
    for cmd in ("data", "train", "eval"):
        monkeypatch.setattr(tf, f"cmd_{cmd}", lambda args, cmd=cmd: ran.append((cmd, vars(args))) or 0)
    args = recipe.argparse.Namespace(feature_prompts=1440, feature_tf_prompts=1024, feature_steps=1500, heldout_prompts=128)
    stages = recipe.feature_stages(tmp_path, args)
    for _, argv in stages:
        assert tf.main(argv) == 0
    assert [c for c, _ in ran] == ["data", "data", "train", "data", "eval"]
    gen, forced, train, held, ev = (a for _, a in ran)
    assert gen["prompts"] == 1440 and not gen["teacher_forced"] and not gen["held_out"]
    assert forced["teacher_forced"] and forced["prompts"] == 1024 and forced["out"] == gen["out"]
    assert train["steps"] == 1500 and train["init"] is None  # from scratch: reproducible
    assert held["held_out"] and held["out"] != gen["out"]
    assert ev["data"] == held["out"] + "/data"


def test_members_are_checked(scripts, capsys):
    recipe, _ = scripts
    with pytest.raises(SystemExit):
        recipe.main(["--members", "ssm,eagle"])
    assert "--members: ['eagle']" in capsys.readouterr().err


def test_a_failing_stage_stops_with_how_to_resume(scripts):
    recipe, _ = scripts
    with pytest.raises(SystemExit, match="run the same command again to resume"):
        recipe.stage("feature data", lambda: 2)

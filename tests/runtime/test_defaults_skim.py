"""A skimming default (what ``elma calibrate --skim-layers`` may choose) is stored in a model folder like any other
spec and run by the runtime with its skim stages; a stage with no layer after it is refused."""

import shutil

import pytest

pytest.importorskip("torch")

from elma.runtime.defaults import SOURCE_CALIBRATED, default_policy, write_default_policy  # noqa: E402


def test_a_skimming_default_is_stored_and_run(tiny_bundles, tmp_path):
    from elma.runtime.engine import Runtime

    folder = shutil.copytree(tiny_bundles.model("bert"), tmp_path / "m")
    for spec, match in [("static:4+skim:1,0.01", "beyond the model's 3"), ("none+skim:3,0.01", "leaves no layer")]:
        with pytest.raises(ValueError, match=match):
            write_default_policy(folder, spec)
    write_default_policy(folder, "entropy:1,1+skim:1,0.01", {"risk": "f1", "skim_grid": ["skim:1,0.01"]})
    assert default_policy(folder) == ("entropy:1,1+skim:1,0.01", SOURCE_CALIBRATED)
    with Runtime.open(folder) as rt:
        assert rt.policy.spec == "entropy:1,1+skim:1,0.01" and [s.layer for s in rt.policy.skim_stages] == [1]
        answer = rt.ask("Where did the dog sleep?", "The dog slept in the garden all day long. " * 4)
        assert answer.policy == "entropy:1,1+skim:1,0.01" and answer.policy_source == SOURCE_CALIBRATED

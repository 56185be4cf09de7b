"""The calibrated default policy: stored in a model folder's config.json, carried by `elma export` into the manifest,
used by Runtime, elma-ask, elma-bench and the offload path when no policy is given, and said in their output;
`--policy none` forces full depth; a folder without one runs full depth and says "none (no calibrated default)"."""

import io
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from conftest import PASSAGES, make_tiny_model_dir, squad_payload  # noqa: E402

from elma.errors import ModelLoadError, OutputExistsError  # noqa: E402
from elma.runtime.defaults import (  # noqa: E402
    SOURCE_CALIBRATED,
    SOURCE_NONE,
    SOURCE_REQUESTED,
    SOURCE_STALE,
    default_policy,
    read_default,
    write_default_policy,
)
from elma.runtime.engine import Runtime  # noqa: E402

CONTEXT, QAS = PASSAGES[0]
QUESTION = QAS[0][0]
SPEC = "static:2"  # of 3 layers: the default visibly stops early
CALIBRATION = {"risk": "f1", "delta": 1.0, "epsilon": 0.1, "n": 24, "data": "calib.json"}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_bundles):
    """A tiny model folder with SPEC as its calibrated default, and its exported bundle."""
    from elma.export.bundle_writer import export_bundle
    from elma.export.specs import ExportConfig

    folder = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(tiny_bundles.model("bert"), folder)
    write_default_policy(folder, SPEC, CALIBRATION)
    bundle = folder.parent / "bundle"
    export_bundle(folder, bundle, ExportConfig(threads=1))
    return folder, bundle


def test_a_folder_without_a_default_runs_full_depth_and_says_so(tiny_bundles):
    folder = tiny_bundles.model("bert")
    assert default_policy(folder) == ("none", SOURCE_NONE) == default_policy(tiny_bundles.bundle("bert"))
    with Runtime.open(folder) as rt:
        a = rt.ask(QUESTION, CONTEXT)
    assert (a.exit_layer, a.policy, a.policy_source) == (3, "none", "no calibrated default")


def test_an_old_config_without_the_new_fields_still_loads(tiny_bundles, tmp_path):
    from elma.model.multi_exit import MultiExitQA

    folder = shutil.copytree(tiny_bundles.model("bert"), tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    for key in ("default_policy", "calibration"):
        config["elma"].pop(key)
    (folder / "config.json").write_text(json.dumps(config))
    assert MultiExitQA.from_pretrained(folder).exit_config.default_policy is None
    assert default_policy(folder) == ("none", SOURCE_NONE)


def test_write_default_policy_stores_it_with_the_weights_hash(calibrated):
    folder, _ = calibrated
    stored = read_default(folder)
    assert (stored.spec, stored.source) == (SPEC, SOURCE_CALIBRATED)
    assert {k: stored.calibration[k] for k in CALIBRATION} == CALIBRATION
    from elma.runtime.filehash import sha256_of

    assert stored.calibration["weights_sha256"] == sha256_of(folder / "model.safetensors")
    from elma.model.multi_exit import MultiExitQA

    assert MultiExitQA.from_pretrained(folder).exit_config.default_policy == SPEC, "the model loads with it"


def test_write_default_policy_refuses_without_overwrite_and_bad_input(tiny_bundles, tmp_path):
    folder = shutil.copytree(tiny_bundles.model("bert"), tmp_path / "m")
    write_default_policy(folder, "entropy:0.5,0.5", {"n": 3})
    before = (folder / "config.json").read_bytes()
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        write_default_policy(folder, "static:1")
    for spec, calibration, match in [("wobble:1", None, "unknown exit policy"), ("static:4", None, "beyond the model's 3"),
                                     ("static:1", {"n": float("nan")}, "JSON values"),
                                     ("static:1", {"weights_sha256": "0" * 64}, "calibrate this model")]:
        with pytest.raises(ValueError, match=match):
            write_default_policy(folder, spec, calibration, overwrite=True)
    assert (folder / "config.json").read_bytes() == before, "a refused write leaves config.json as it was"
    with pytest.raises(ModelLoadError, match="ELMA model folder"):
        write_default_policy(tmp_path, "static:1")
    write_default_policy(folder, "static:1", overwrite=True)
    assert default_policy(folder) == ("static:1", SOURCE_CALIBRATED)
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "no temporary file left"


def test_new_weights_invalidate_the_default(tiny_bundles, tmp_path):
    folder = shutil.copytree(tiny_bundles.model("bert"), tmp_path / "m")
    write_default_policy(folder, SPEC)
    other = make_tiny_model_dir(tmp_path / "other", "bert", seed=1)
    shutil.copyfile(other / "model.safetensors", folder / "model.safetensors")
    assert default_policy(folder) == ("none", SOURCE_STALE)
    with Runtime.open(folder) as rt:
        assert rt.ask(QUESTION, CONTEXT).exit_layer == 3
    from elma.export.bundle_writer import export_bundle
    from elma.export.specs import ExportConfig

    export_bundle(folder, tmp_path / "b", ExportConfig(threads=1))
    assert json.loads((tmp_path / "b/manifest.json").read_text())["exit_thresholds"] is None


def test_training_drops_the_default_of_the_weights_it_started_from(calibrated, tmp_path):
    from elma.train.trainer import TrainConfig, train

    folder, _ = calibrated
    data = tmp_path / "squad.json"
    data.write_text(json.dumps(squad_payload(copies=1)))
    train(TrainConfig(model=str(folder), train_files=(str(data),), output_dir=str(tmp_path / "new"), max_steps=1,
                      batch_size=2, save_every=10, threads=1, max_seq_length=64, doc_stride=16, max_query_length=16))
    assert default_policy(tmp_path / "new") == ("none", SOURCE_NONE)


def test_export_carries_the_default_into_the_manifest(calibrated):
    folder, bundle = calibrated
    entry = json.loads((bundle / "manifest.json").read_text())["exit_thresholds"]
    assert entry["default"] == SPEC and entry["calibration"] == read_default(folder).calibration
    assert read_default(bundle).calibration["epsilon"] == 0.1


@pytest.mark.parametrize("which", ["bundle", "folder"])
def test_runtime_uses_the_default_and_policy_none_overrides_it(calibrated, which):
    path = dict(zip(["folder", "bundle"], calibrated))[which]
    with Runtime.open(path) as rt:
        assert rt.policy.spec == SPEC and rt.policy_source == SOURCE_CALIBRATED
        a = rt.ask(QUESTION, CONTEXT)
        assert (a.exit_layer, a.policy, a.policy_source) == (2, SPEC, SOURCE_CALIBRATED)
        b = rt.ask(QUESTION, CONTEXT, policy="none")
        assert (b.exit_layer, b.policy, b.policy_source) == (3, "none", SOURCE_REQUESTED)
    with Runtime.open(path, policy="none") as rt:
        assert rt.ask(QUESTION, CONTEXT).exit_layer == 3 and rt.policy_source == SOURCE_REQUESTED


def ask_cli(argv):
    from elma.ask_cli import main

    out = io.StringIO()
    code = main(argv, io.StringIO(""), out)
    return code, out.getvalue()


@pytest.mark.parametrize("which", ["bundle", "folder"])
def test_elma_ask_says_which_policy_ran_and_where_it_came_from(calibrated, which, capsys):
    path = str(dict(zip(["folder", "bundle"], calibrated))[which])
    code, out = ask_cli([QUESTION, "--model", path, "--context", CONTEXT])
    assert code == 0 and "exit layer 2/3" in out and f"policy {SPEC} (calibrated default)" in out, out
    assert "backend onnxruntime" in out
    code, out = ask_cli([QUESTION, "--model", path, "--context", CONTEXT, "--json", "--policy", "none"])
    record = json.loads(out)
    assert (record["exit_layer"], record["policy"], record["policy_source"]) == (3, "none", "requested")
    assert record["backend"].startswith("onnxruntime")
    capsys.readouterr()


def test_elma_ask_without_a_default_says_none(tiny_bundles):
    code, out = ask_cli([QUESTION, "--model", str(tiny_bundles.bundle("bert")), "--context", CONTEXT])
    assert code == 0 and "policy none (no calibrated default)" in out and "exit layer 3/3" in out


def test_elma_bench_uses_the_default_and_says_so(calibrated, tmp_path, capsys):
    from elma.bench.cli import main

    _, bundle = calibrated
    data = tmp_path / "d.json"
    data.write_text(json.dumps(squad_payload(copies=1)))
    common = [str(bundle), "--data", str(data), "--no-baselines", "--no-progress", "--warmup", "0"]
    assert main(common + ["--report-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert f"policy {SPEC} (calibrated default)" in out and "mean exit layer 2.00/3" in out
    report = json.loads((tmp_path / "r/report.json").read_text())
    assert (report["policy"], report["policy_source"]) == (SPEC, SOURCE_CALIBRATED)
    assert main(common + ["--policy", "none"]) == 0
    out = capsys.readouterr().out
    assert "policy none (requested)" in out and "mean exit layer 3.00/3" in out


def test_elma_demo_runs_the_default(calibrated, capsys):
    from elma.cli import main

    folder, _ = calibrated
    assert main(["demo", "--model", str(folder), "--question", QUESTION, "--context", CONTEXT]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[1:4]] == ["exit 1", "exit 2", "exit 3"]
    assert lines[-1].startswith(f"policy {SPEC} (calibrated default): stops after exit 2 of 3: ")


def test_elma_energy_runs_the_default_in_its_early_exit_pass(calibrated, tmp_path, capsys):
    from elma.power.energy_cli import main

    _, bundle = calibrated
    data = tmp_path / "d.json"
    data.write_text(json.dumps(squad_payload(copies=1)))
    assert main([str(bundle), "--data", str(data), "--source", "null", "--limit", "3", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert f"early pass, policy {SPEC} (calibrated default): 3 questions, mean exit layer 2.00/3" in out
    assert "full pass, policy none (requested): 3 questions, mean exit layer 3.00/3" in out


def test_an_unusable_default_in_a_folder_is_a_model_error_unless_a_policy_is_given(tiny_bundles, tmp_path):
    folder = shutil.copytree(tiny_bundles.model("bert"), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["elma"]["default_policy"] = "static:9"  # by hand: write_default_policy refuses it
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="run `elma calibrate` again"):
        Runtime.open(folder)
    with Runtime.open(folder, policy="none") as rt:
        assert rt.ask(QUESTION, CONTEXT).exit_layer == 3


def test_a_default_stored_without_a_guarantee_says_so():
    from elma.runtime.defaults import SOURCE_CALIBRATED, SOURCE_UNCERTIFIED, from_model_config

    picked = {"elma": {"default_policy": "entropy:2.4,1.4", "calibration": {"delta": 1.0, "epsilon": None}}}
    certified = {"elma": {"default_policy": "entropy:2.4,1.4", "calibration": {"delta": 1.0, "epsilon": 0.1}}}
    assert from_model_config(picked, Path("m"), check_weights=False).describe() == \
        "entropy:2.4,1.4 (default, calibrated without a guarantee)"
    assert from_model_config(picked, Path("m"), check_weights=False).source == SOURCE_UNCERTIFIED
    assert from_model_config(certified, Path("m"), check_weights=False).source == SOURCE_CALIBRATED

"""Nothing a user owns is lost: every command that writes an output, in one table.

For each writer: an output that is already there is refused with one line on stderr naming it and --overwrite,
exit status 2, and left byte for byte as it was (a report folder's unrelated files included), with nothing
else written beside it; with --overwrite the command runs and replaces it, leaving no temporary file. A folder
that is not an earlier output of the same command is never replaced, even with --overwrite.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from conftest import make_wordpiece_tokenizer, squad_payload  # noqa: E402

from elma.bench import cli as bench_cli  # noqa: E402
from elma.cli import main as elma_main  # noqa: E402
from elma.power import energy_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY_BERT = ROOT / "tests" / "fixtures" / "tiny-bert.json"
USER_BYTES = b"the user's own file \x00\xff\n"


@dataclass(frozen=True)
class Writer:
    """One output of one command. ``argv`` names it OUT; MODEL, BUNDLE, DATA, TOK, CKPT (a run's checkpoint) and FRESH (a path for a
    second output that must not be there) are filled in by the test."""

    name: str
    main: Callable[[List[str]], int]
    argv: List[str]
    folder: bool = False
    marker: Optional[str] = None  # the file that makes a folder an earlier output of this command
    overwrite: bool = True  # False: the command never replaces this output (no --overwrite)
    extra_out: List[str] = field(default_factory=list)  # argv names of other outputs the run writes (FRESH)


BENCH = ["BUNDLE", "--data", "DATA", "--policy", "static:1", "--no-baselines", "--warmup", "0", "--no-progress"]
TRAIN = [str(TINY_BERT), "--tokenizer", "TOK", "--train-file", "DATA", "--max-steps", "2", "--batch-size", "4",
         "--max-seq-length", "48", "--doc-stride", "8", "--max-query-length", "12", "--save-every", "1", "--threads", "1"]

WRITERS = [
    Writer("elma-bench --report-dir", bench_cli.main, BENCH + ["--report-dir", "OUT", "--predictions-out", "FRESH"],
           folder=True, marker="report.json", extra_out=["FRESH"]),
    Writer("elma-bench --predictions-out", bench_cli.main, BENCH + ["--predictions-out", "OUT", "--report-dir", "FRESH"],
           extra_out=["FRESH"]),
    Writer("elma-bench --na-probs-out", bench_cli.main, BENCH + ["--na-probs-out", "OUT"]),
    Writer("elma-energy --report-dir", energy_cli.main, ["BUNDLE", "--data", "DATA", "--source", "null", "--policy",
           "static:1", "--limit", "2", "--warmup", "0", "--report-dir", "OUT"], folder=True, marker="energy.json"),
    Writer("elma predict -o", elma_main, ["predict", "MODEL", "DATA", "-o", "OUT", "--na-probs-out", "FRESH"],
           extra_out=["FRESH"]),
    Writer("elma predict --na-probs-out", elma_main, ["predict", "MODEL", "DATA", "-o", "FRESH", "--na-probs-out", "OUT"],
           extra_out=["FRESH"]),
    Writer("elma predict --all-exits-out", elma_main, ["predict", "MODEL", "DATA", "-o", "FRESH", "--all-exits-out", "OUT"],
           extra_out=["FRESH"]),
    Writer("elma export -o", elma_main, ["export", "MODEL", "-o", "OUT", "--threads", "1"], folder=True,
           marker="manifest.json"),
    Writer("elma train -o", elma_main, ["train", *TRAIN, "-o", "OUT"], folder=True, marker="config.json"),
    Writer("elma convert -o", elma_main, ["convert", "MODEL", "-o", "OUT"], folder=True, marker="config.json"),
    Writer("elma snapshot -o", elma_main, ["snapshot", "CKPT", "-o", "OUT"]),
    Writer("elma prepare-data -o", elma_main, ["prepare-data", "DATA", "-o", "OUT", "--holdout-articles", "0"],
           folder=True, marker="split.json"),
    Writer("elma power sample --csv", elma_main, ["power", "sample", "--source", "null", "--duration", "0.1",
                                                   "--interval-ms", "20", "--csv", "OUT"]),
    Writer("elma finetune -o", elma_main, ["finetune", "--errors", "sqlite:///FRESH", "--base", "MODEL", "-o", "OUT",
                                           "--train-file", "DATA", "--heldout", "DATA"], folder=True, marker="config.json",
           overwrite=False),
]


@pytest.fixture(scope="module")
def inputs(tiny_bundles, tmp_path_factory) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("inputs")
    data, tok = root / "squad.json", root / "tokenizer.json"
    data.write_text(json.dumps(squad_payload(copies=1)))
    make_wordpiece_tokenizer().save(str(tok))
    run_dir = root / "run"  # a training run's checkpoint, for elma snapshot
    argv = [a for a in TRAIN if a not in ("--max-steps", "2")] + ["--max-steps", "1", "-o", str(run_dir)]
    assert elma_main(["train", *[{"DATA": str(data), "TOK": str(tok)}.get(a, a) for a in argv]]) == 0
    return {"MODEL": str(tiny_bundles.model("bert")), "BUNDLE": str(tiny_bundles.bundle("bert")), "DATA": str(data),
            "TOK": str(tok), "CKPT": str(run_dir / "checkpoint.pt")}


def snapshot(root: Path) -> Dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), folders included as empty entries."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"") for p in sorted(root.rglob("*"))}


def make_existing(writer: Writer, out: Path) -> None:
    """What the user already has at OUT: a file of their own, or an earlier output holding a note of theirs."""
    if writer.folder:
        out.mkdir()
        (out / (writer.marker or "old.txt")).write_bytes(b"an earlier output")
        (out / "notes.txt").write_bytes(USER_BYTES)
    else:
        out.write_bytes(USER_BYTES)


def run(writer: Writer, inputs: Dict[str, str], out: Path, fresh: Path, *extra: str) -> int:
    subst = {**inputs, "OUT": str(out), "FRESH": str(fresh)}
    return writer.main([subst.get(a, a.replace("FRESH", str(fresh))) for a in writer.argv] + list(extra))


@pytest.mark.parametrize("writer", WRITERS, ids=[w.name for w in WRITERS])
def test_an_existing_output_is_refused_untouched_then_replaced_on_request(writer, inputs, tmp_path, capsys):
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    make_existing(writer, out)
    before = snapshot(tmp_path)

    assert run(writer, inputs, out, fresh) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0], err
    assert ("--overwrite" in err[0]) == writer.overwrite, err[0]
    assert snapshot(tmp_path) == before, "the output is untouched and nothing else was written (nor left behind)"

    if not writer.overwrite:
        return
    assert run(writer, inputs, out, fresh, "--overwrite") == 0, capsys.readouterr().err
    after = sorted(p.name for p in tmp_path.iterdir())
    assert after == sorted(["out"] + (["fresh"] if writer.extra_out else [])), "no temporary file or folder left"
    if writer.folder:
        assert not (out / "notes.txt").exists(), "the folder is the new output, not a mix of old and new"
        assert (out / writer.marker).read_bytes() != b"an earlier output"
    else:
        assert out.read_bytes() != USER_BYTES and out.stat().st_size > 0


FOLDERS = [w for w in WRITERS if w.folder and w.overwrite]


@pytest.mark.parametrize("writer", FOLDERS, ids=[w.name for w in FOLDERS])
def test_a_folder_that_is_not_an_earlier_output_is_never_replaced(writer, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_bytes(USER_BYTES)
    before = snapshot(tmp_path)
    assert run(writer, inputs, out, tmp_path / "fresh", "--overwrite") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "--overwrite" in err[0] and "is not" in err[0], err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("writer", [WRITERS[0], WRITERS[4]], ids=["folder", "file"])
def test_an_output_of_the_other_kind_is_never_replaced(writer, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    if writer.folder:
        out.write_bytes(USER_BYTES)
    else:
        out.mkdir()
        (out / "notes.txt").write_bytes(USER_BYTES)
    before = snapshot(tmp_path)
    assert run(writer, inputs, out, tmp_path / "fresh", "--overwrite") == 2
    assert str(out) in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_two_outputs_at_one_path_or_an_input_as_output_are_refused_before_any_work(inputs, tmp_path, capsys):
    same = tmp_path / "p.json"
    assert bench_cli.main([*(inputs.get(a, a) for a in BENCH), "--predictions-out", str(same), "--na-probs-out",
                           str(same)]) == 2
    assert "name the same place" in capsys.readouterr().err
    assert elma_main(["predict", inputs["MODEL"], inputs["DATA"], "-o", inputs["DATA"], "--overwrite"]) == 2
    assert "would replace the input" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---- writers into an existing bundle: calibrate (its calibration) and build-engines (its engines) -------------

def _load_fake_tensorrt():
    """The recording TensorRT stand-in of tests/export/test_tensorrt_build.py (builds bytes, no GPU)."""
    spec = importlib.util.spec_from_file_location("_trt_build_tests", ROOT / "tests/export/test_tensorrt_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fake_tensorrt


@pytest.fixture
def bundle_copy(inputs, tmp_path) -> Path:
    return Path(shutil.copytree(inputs["BUNDLE"], tmp_path / "bundle"))


def test_calibrate_keeps_an_earlier_calibration_unless_overwrite(inputs, bundle_copy, capsys):
    argv = ["calibrate", str(bundle_copy), "--data", inputs["DATA"], "--max-f1-drop", "1", "--policies", "static"]
    assert elma_main(argv) == 0, "a bundle without a calibration is calibrated"
    manifest = bundle_copy / "manifest.json"
    first = manifest.read_bytes()
    capsys.readouterr()
    assert elma_main(argv[:-1] + ["entropy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(manifest) in err[0] and "--overwrite" in err[0], err
    assert manifest.read_bytes() == first
    assert elma_main(argv[:-1] + ["entropy", "--dry-run"]) == 0 and manifest.read_bytes() == first
    assert elma_main(argv[:-1] + ["entropy", "--overwrite"]) == 0
    assert "entropy" in json.loads(manifest.read_text())["exit_thresholds"]["policies"]


def test_build_engines_keeps_earlier_engines_unless_overwrite(bundle_copy, monkeypatch, capsys):
    from elma.runtime import trt_compat
    from elma.runtime.bundle import load_bundle

    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", _load_fake_tensorrt()("10.3.0", calls))
    monkeypatch.setattr(trt_compat, "gpu_identity", lambda device=0: ("Orin", "8.7"))
    assert elma_main(["build-engines", str(bundle_copy)]) == 0
    before = snapshot(bundle_copy)
    capsys.readouterr()
    assert elma_main(["build-engines", str(bundle_copy), "--fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bundle_copy / "manifest.json") in err[0] and "--overwrite" in err[0], err
    assert snapshot(bundle_copy) == before and len(calls) == 8, "refused before anything was built"
    assert elma_main(["build-engines", str(bundle_copy), "--fp16", "--overwrite"]) == 0
    assert load_bundle(bundle_copy).engines["fp16"] is True
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"], "no staging folder left"


def test_a_failed_engine_build_leaves_the_earlier_engines(bundle_copy, monkeypatch):
    from elma.runtime import trt_compat
    from elma.runtime.bundle import load_bundle

    calls: list = []
    fake = _load_fake_tensorrt()("10.3.0", calls)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_compat, "gpu_identity", lambda device=0: ("Orin", "8.7"))
    assert elma_main(["build-engines", str(bundle_copy)]) == 0
    before = snapshot(bundle_copy)
    build = fake.Builder.build_serialized_network

    def fail_on_fused(self, network, config):
        if network.source == "fused.onnx":
            return None  # what TensorRT returns when a build fails
        return build(self, network, config)

    monkeypatch.setattr(fake.Builder, "build_serialized_network", fail_on_fused)
    assert elma_main(["build-engines", str(bundle_copy), "--fp16", "--overwrite"]) == 3
    assert snapshot(bundle_copy) == before, "no engine of the failed build replaced an earlier one"
    assert load_bundle(bundle_copy).engines["fp16"] is False
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]


# ---- elma train: inputs checked before -o is created; --resume unchanged -----------------------------------------

@pytest.mark.parametrize("change, code, message", [
    ({"--train-file": "MISSING"}, 2, "no such training file"),
    ({"--tokenizer": "MISSING"}, 2, "no such tokenizer"),
    ({"MODEL": "MISSING"}, 3, "no such file or folder (and not a Hugging Face model id)"),
    ({"--eval-file": "MISSING"}, 2, "missing.json"),
    ({"--eval-file": "NOT_SQUAD"}, 2, "not-squad.json"),
])
def test_train_checks_its_inputs_before_creating_the_output_folder(inputs, tmp_path, capsys, change, code, message):
    missing, not_squad = tmp_path / "missing.json", tmp_path / "not-squad.json"
    not_squad.write_text('{"hello": 1}')
    names = {"MISSING": str(missing), "NOT_SQUAD": str(not_squad)}
    argv = ["train", *(inputs.get(a, a) for a in TRAIN), "-o", str(tmp_path / "run")]
    for flag, value in change.items():
        if flag == "MODEL":
            argv[1] = names[value]
        elif flag in argv:
            argv[argv.index(flag) + 1] = names[value]
        else:
            argv += [flag, names[value]]
    assert elma_main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_train_resume_continues_an_existing_folder_and_overwrite_starts_over(inputs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", *(inputs.get(a, a) for a in TRAIN), "-o", str(run_dir)]
    assert elma_main(argv) == 0
    state = json.loads((run_dir / "train_state.json").read_text())
    assert state["steps"] == 2
    assert elma_main(argv) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err
    longer = [a if a != "2" else "3" for a in argv]  # --max-steps 3: other settings, so resume refuses them
    assert elma_main(longer + ["--resume"]) == 2 and "other settings" in capsys.readouterr().err
    assert elma_main(argv + ["--resume"]) == 0, "resuming a finished run is a no-op that rewrites its outputs"
    assert elma_main(argv + ["--resume", "--overwrite"]) == 2
    assert elma_main(argv + ["--overwrite"]) == 0
    assert json.loads((run_dir / "train_state.json").read_text())["first_step"] == 0, "a new run from step 0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]

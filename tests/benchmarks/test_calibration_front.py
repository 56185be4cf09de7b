"""benchmarks/calibration_front.py on a tiny bundle: every risk and bound certified on one recording, the front
within each F1 bound, the recordings cached and read back, and an existing report refused."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import calibration_front  # noqa: E402


def test_certificates_front_and_cache(tiny_bundles, tiny_squad, tmp_path, capsys, monkeypatch):
    bundle = str(tiny_bundles.bundle("bert"))
    out, cache = tmp_path / "front.json", tmp_path / "rec.pkl"
    argv = [bundle, "--data", str(tiny_squad), "--skim-layers", "1", "--skim-thresholds", "0.03", "--delta", "60",
            "--epsilon", "0.3", "--cache", str(cache)]
    assert calibration_front.main(argv + ["--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(c["risk"], c["bound"]) for c in report["certificates"]] == list(calibration_front.COMBINATIONS)
    assert report["skim_grid"] == ["skim:1,0.03"] and cache.is_file()
    for entry in report["front"]:
        for pick in (entry["fewest_layers"], entry["fewest_token_layers"]):
            assert pick["f1_drop_points"] <= entry["f1_within_points"]
    bounds = [f["fewest_layers"]["mean_layers"] for f in report["front"]]
    assert bounds == sorted(bounds, reverse=True), "a looser F1 bound never needs more layers"
    capsys.readouterr()

    # A rerun reads the recordings back (the runtime is not opened) and refuses to replace the report.
    from elma.runtime import engine

    monkeypatch.setattr(engine.Runtime, "open", lambda *a, **k: pytest.fail("recorded again despite --cache"))
    assert calibration_front.main(argv + ["--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["certificates"] == report["certificates"] and again["front"] == report["front"]
    before = out.read_text()
    assert calibration_front.main(argv + ["--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == before

"""Smoke test of benchmarks/torch_onednn.py on a tiny model: each setting's memory in its own child, both settings
timed by elma-bench's interleaved schedule with the same answers, the ratio that of the means; a taken --out
refused first."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import torch_onednn  # noqa: E402


def test_memory_in_children_and_alternating_timing(tiny_bundles, tiny_squad, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = [str(tiny_bundles.bundle("bert")), "--torch-model", str(tiny_bundles.model("bert")), "--data",
            str(tiny_squad), "--limit", "4", "--warmup", "1", "--out", str(out)]
    assert torch_onednn.main(argv) == 0
    result = json.loads(out.read_text())
    assert [m["setting"] for m in result["memory"]] == ["on", "off"]
    assert all(m["rss_end_mib"] > 0 and m["growth_mib"] == pytest.approx(m["rss_end_mib"] - m["rss_after_warmup_mib"],
                                                                        abs=0.11) for m in result["memory"])
    assert result["questions"] == 4 and result["answers_that_differ"] == 0
    on, off = result["mean_ms"]["onednn on"], result["mean_ms"]["onednn off"]
    assert result["speedup_of_off"]["ratio"] == pytest.approx(on / off)
    assert "off is" in capsys.readouterr().out
    out.write_text("mine")
    with pytest.raises(SystemExit) as err:
        torch_onednn.main(argv)
    assert err.value.code == 2 and out.read_text() == "mine"


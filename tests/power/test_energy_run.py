"""elma-energy's measurement: a source that dies mid-run becomes a gap (figures null, never 0) in a finished
report; the per-layer estimate by hand."""

from __future__ import annotations

import json
import threading
import time

import pytest

from elma.bench.runner import QuestionResult
from elma.errors import PowerMeterUnavailable, PowerReadError
from elma.power import PowerConfig, PowerMeter, PowerSample
from elma.power.energy_figures import WindowEnergy, layer_estimates


class DyingMeter(PowerMeter):
    """A live, sampler-paced source at 5 W that fails for good once ``dead`` is set (a supply unplugged).

    Each reading is stamped before ``dead`` is checked, so every sample it returns predates the moment the test
    kills it: the full-depth pass, which starts after that, has no sample at all.
    """

    name = "dying"
    self_paced = False

    def __init__(self):
        self.dead = threading.Event()

    def describe(self) -> str:
        return "dying 5000 mW source (test)"

    def start(self) -> None:
        if self.dead.is_set():
            raise PowerMeterUnavailable("supply still unplugged")

    def read(self):
        stamp_s = time.monotonic()
        if self.dead.is_set():
            raise PowerReadError("connection lost")
        return PowerSample(stamp_s, {"VDD_IN": 5000.0}, 5000.0)


def test_source_dying_mid_run_is_a_gap_in_a_finished_report(tiny_bundles, tiny_squad, tmp_path):
    pytest.importorskip("onnxruntime")
    from elma.power.energy_figures import build_report
    from elma.power.energy_report import write_energy_report
    from elma.power.energy_run import EnergyConfig, run_energy

    meter = DyingMeter()
    stages = []

    def on_stage(stage: str) -> None:
        stages.append(stage)
        if stage == "timed pass 1/1: none":  # the full-depth pass is about to start: pull the plug
            meter.dead.set()

    cfg = EnergyConfig(model=str(tiny_bundles.bundle("bert")), data=str(tiny_squad), policy="static:1", limit=3, warmup=0,
                       power=PowerConfig(source="null", interval_ms=10, retry_s=0.5))
    run = run_energy(cfg, meter=meter, on_stage=on_stage)
    assert "timed pass 1/1: none" in stages and meter.dead.is_set()
    report = build_report(run, "elma-energy (test)")
    write_energy_report(report, run, tmp_path / "report")

    saved = json.loads((tmp_path / "report" / "energy.json").read_text())
    [gap] = saved["gaps"]
    assert gap["reason"] == "connection lost" and gap["end_s"] is not None  # closed when the sampler stopped
    early, full = saved["passes"]
    assert early["window"]["energy_mj"] == pytest.approx(5000.0 * early["window"]["duration_s"], rel=1e-9)
    assert early["questions_measured"] == 3
    assert gap["start_s"] < full["window"]["start_s"] and full["window"]["gaps"]
    assert full["window"]["energy_mj"] is None and full["window"]["measured_s"] == 0  # null, never 0 mJ
    assert full["energy_per_question_mj"] is None and full["question_energy_mean_mj"] is None
    assert full["questions_measured"] == 0 and all(q["window"]["energy_mj"] is None for q in full["question_windows"])
    assert all(row["energy_estimate_mj"] is None for row in full["layers"])
    assert saved["saving"] is None and saved["question_saving"] is None
    assert 0 < saved["measurement"]["coverage"] < 1
    assert any("gap" in n for n in saved["notes"])
    md = (tmp_path / "report" / "energy.md").read_text()
    assert "## Gaps (source failures)" in md and "connection lost" in md
    assert "#gap," in (tmp_path / "report" / "samples.csv").read_text()
    assert (tmp_path / "report" / "power.png").read_bytes()[:4] == b"\x89PNG"


def _window(mean_power_mw):
    energy = None if mean_power_mw is None else mean_power_mw * 0.01
    return WindowEnergy("w", 0.0, 0.01, 0.01, 0.0 if energy is None else 0.01, 0.0 if energy is None else 1.0, energy,
                        mean_power_mw, mean_power_mw, 0, [])


def test_layer_estimate_by_hand():
    questions = [QuestionResult("a", "", 0.0, 2, (2,), 6.0, (2.0, 3.0)),
                 QuestionResult("b", "", 0.0, 1, (1,), 2.0, (1.0,)),
                 QuestionResult("c", "", 0.0, 2, (2,), 9.0, (4.0, 4.0))]  # not measured
    rows = layer_estimates(questions, [_window(4000.0), _window(2000.0), _window(None)], num_layers=3)
    assert [(r.layer, r.questions, r.questions_measured) for r in rows] == [(1, 3, 2), (2, 2, 1), (3, 0, 0)]
    assert [r.time_ms for r in rows] == [7.0, 7.0, 0.0]
    assert rows[0].energy_estimate_mj == pytest.approx(4000 * 2.0 / 1e3 + 2000 * 1.0 / 1e3)  # mW x ms / 1000 = mJ
    assert rows[0].mean_energy_estimate_mj == pytest.approx(5.0)
    assert rows[1].energy_estimate_mj == pytest.approx(12.0)
    assert rows[2].energy_estimate_mj is None and rows[2].mean_energy_estimate_mj is None

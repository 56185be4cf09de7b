"""elma-energy end to end on a tiny bundle against a replayed power profile, and without any power source.

Replay timing: ``ReplayMeter`` either keeps the recorded timestamps (``realtime=False``, the default) or
re-stamps them from "now" and yields each one when its time comes (``--realtime-replay``). The end-to-end
test keeps them: it records its profile on this process's ``time.monotonic()`` clock (the sampler's clock),
from 1 s before the run to 10 minutes after, so the sampler has every sample at once, every window of the
run lies inside the recording, and each window's energy is an exact integral of a known profile; nothing
depends on how fast this (busy) machine runs the model or on thread scheduling.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from conftest import squad_payload  # noqa: E402

from elma.power import PowerConfig, PowerSample, PowerSampler, PowerTrace, measure, open_meter, write_trace_csv  # noqa: E402
from elma.power.energy_cli import main  # noqa: E402

TOTAL_MW = 5000.0  # VDD_IN, the board total of this rail set (elma.power.rails)
CPU_MW = 2000.0  # VDD_CPU_GPU_CV, constant
SOC_LOW_MW, SOC_HIGH_MW = 1000.0, 3000.0  # VDD_SOC: a square wave, 100 ms at each level
STEP_S = 0.1


def _square_wave_profile(t0: float, duration_s: float):
    """Samples of the profile from ``t0``: constant total and CPU rail, VDD_SOC stepping every ``STEP_S`` (two
    samples at each step time, so the step is vertical and every integral below is exact)."""
    edges = [t0 + STEP_S * k for k in range(int(duration_s / STEP_S) + 1)]
    levels = [SOC_LOW_MW if k % 2 == 0 else SOC_HIGH_MW for k in range(len(edges))]
    samples = []
    for k, t in enumerate(edges):
        for level in ((levels[k - 1],) if k else ()) + (levels[k],):
            samples.append(PowerSample(t, {"VDD_IN": TOTAL_MW, "VDD_CPU_GPU_CV": CPU_MW, "VDD_SOC": level}, TOTAL_MW))
    return samples, edges, levels


def _soc_energy_mj(edges, levels, start_s: float, end_s: float) -> float:
    """The square wave's integral over [start_s, end_s] by hand: level x overlap of each step, mW x s = mJ."""
    return sum(level * max(0.0, min(b, end_s) - max(a, start_s)) for a, b, level in zip(edges, edges[1:], levels))


@pytest.fixture(scope="module")
def replay_run(tiny_bundles, tmp_path_factory):
    out = tmp_path_factory.mktemp("energy")
    data = out / "tiny-squad.json"
    data.write_text(json.dumps(squad_payload(copies=1)))
    samples, edges, levels = _square_wave_profile(time.monotonic() - 1.0, 600.0)
    recorded = out / "recorded.csv"
    write_trace_csv(recorded, PowerTrace(samples, [], "synthetic square wave (test)"))
    report_dir = out / "report"
    argv = [str(tiny_bundles.bundle("bert")), "--data", str(data), "--source", f"replay:{recorded}", "--policy", "static:1",
            "--limit", "4", "--warmup", "1", "--report-dir", str(report_dir)]
    assert main(argv) == 0
    return report_dir, json.loads((report_dir / "energy.json").read_text()), (edges, levels), argv


def test_report_files_exist(replay_run):
    report_dir, report, _, argv = replay_run
    assert {p.name for p in report_dir.iterdir()} == {"energy.json", "samples.csv", "energy.md", "power.png"}
    assert (report_dir / "power.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in report_dir.parent.iterdir() if p.name.startswith(".report")], "no temporary folder left"
    md = (report_dir / "energy.md").read_text()
    assert report["command"] == "elma-energy " + " ".join(argv) and report["command"] in md
    for heading in ("## Passes", "## Rails", "## Per-layer energy (estimate)"):
        assert heading in md
    assert report["total_rule"] == "VDD_IN" and report["total_rails"] == ["VDD_IN"]
    assert report["gaps"] == [] and report["measurement"]["coverage"] == pytest.approx(1.0)


def test_question_energy_is_the_integral_over_its_window(replay_run):
    _, report, _, _ = replay_run
    early, full = report["passes"]
    assert (early["name"], early["policy"], full["name"], full["policy"]) == ("early", "static:1", "full", "none")
    assert early["mean_exit_layer"] == 1 and full["mean_exit_layer"] == report["num_layers"] == 3
    for p in (early, full):
        window = p["window"]
        assert window["coverage"] == pytest.approx(1.0)
        assert window["energy_mj"] == pytest.approx(TOTAL_MW * (window["end_s"] - window["start_s"]), rel=1e-9)
        assert p["energy_per_question_mj"] == pytest.approx(window["energy_mj"] / p["questions"])
        questions = p["question_windows"]
        assert [q["window"]["key"] for q in questions] == [f"{p['name']}/q{i}" for i in range(1, 5)]
        energies = []
        for q in questions:
            w = q["window"]
            assert window["start_s"] <= w["start_s"] < w["end_s"] <= window["end_s"]
            assert w["energy_mj"] == pytest.approx(TOTAL_MW * (w["end_s"] - w["start_s"]), rel=1e-9)
            assert w["duration_s"] * 1e3 >= q["latency_ms"] * 0.999  # the window holds the timed ask call
            energies.append(w["energy_mj"])
        assert sum(energies) <= window["energy_mj"]
        assert p["questions_measured"] == 4
        assert p["question_energy_mean_mj"] == pytest.approx(sum(energies) / 4)
        assert p["question_energy_median_mj"] == pytest.approx(sorted(energies)[1] / 2 + sorted(energies)[2] / 2)
    assert report["saving"] == pytest.approx(1 - early["window"]["energy_mj"] / full["window"]["energy_mj"])
    assert report["question_saving"] == pytest.approx(1 - early["question_energy_mean_mj"] / full["question_energy_mean_mj"])


def test_rails_integrate_a_step_profile(replay_run):
    _, report, (edges, levels), _ = replay_run
    for p in report["passes"]:
        rails = {r["rail"]: r for r in p["rails"]}
        start_s, end_s = p["window"]["start_s"], p["window"]["end_s"]
        assert rails["VDD_CPU_GPU_CV"]["energy_mj"] == pytest.approx(CPU_MW * (end_s - start_s), rel=1e-9)
        assert rails["VDD_SOC"]["energy_mj"] == pytest.approx(_soc_energy_mj(edges, levels, start_s, end_s), rel=1e-9, abs=1e-9)
        assert rails["VDD_IN"]["energy_mj"] == pytest.approx(p["window"]["energy_mj"])


def test_per_layer_estimate_is_question_power_times_layer_time(replay_run):
    _, report, _, _ = replay_run
    early, full = report["passes"]
    assert [row["questions"] for row in early["layers"]] == [4, 0, 0]
    assert early["layers"][1]["energy_estimate_mj"] is None  # no question ran layer 2: null, not 0
    assert [row["questions"] for row in full["layers"]] == [4, 4, 4]
    for p in (early, full):
        for row in p["layers"]:
            if row["questions"]:
                assert row["energy_estimate_mj"] == pytest.approx(TOTAL_MW * row["time_ms"] / 1e3, rel=1e-9)
        estimated = sum(row["energy_estimate_mj"] or 0.0 for row in p["layers"])
        assert estimated <= sum(q["window"]["energy_mj"] for q in p["question_windows"])
    assert "estimate" in report["layer_energy_method"]


def test_samples_csv_replays_to_the_same_figures(replay_run):
    report_dir, report, _, _ = replay_run
    sampler = PowerSampler(open_meter(PowerConfig(source=f"replay:{report_dir / 'samples.csv'}")), retry_s=0.0).start()
    sampler._thread.join(10)
    sampler.stop()
    trace = sampler.trace()
    assert len(trace.samples) == report["samples"]
    windows = [report["measurement"]] + [p["window"] for p in report["passes"]]
    windows += [q["window"] for p in report["passes"] for q in p["question_windows"]]
    for w in windows:
        again = measure(trace, w["key"], w["start_s"], w["end_s"])
        assert again.energy_mj == pytest.approx(w["energy_mj"], rel=1e-12), w["key"]
        assert again.measured_s == pytest.approx(w["measured_s"], rel=1e-12)


@pytest.mark.parametrize("source, extra, says", [
    ("auto", [], "looked for"),
    ("tegrastats", ["--tegrastats-cmd", "/nonexistent/tegrastats"], "cannot run '/nonexistent/tegrastats'"),
    ("ina3221:{tmp}/sys", [], "no INA3221 rails"),
])
def test_no_power_source_is_one_line_and_no_report(tmp_path, source, extra, says):
    """Run as a console script would (a subprocess, real logging to stderr): one line, exit 3, no report."""
    data = tmp_path / "tiny-squad.json"
    data.write_text(json.dumps(squad_payload()))
    model = tmp_path / "model"
    model.mkdir()  # never loaded: the source is opened first
    report_dir = tmp_path / "report"
    root = Path(__file__).resolve().parents[2]
    code = "import sys; from elma.power.energy_cli import main; sys.exit(main())"
    argv = [str(model), "--data", str(data), "--source", source.format(tmp=tmp_path), "--sysfs-root", str(tmp_path / "sys"),
            "--jtop-socket", str(tmp_path / "jtop.sock"), "--report-dir", str(report_dir), *extra]
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": str(tmp_path / "no-tools")}, timeout=120)
    assert proc.returncode == 3, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("elma-energy: error: no power source could be opened"), proc.stderr
    assert says in err[0]
    assert proc.stdout == ""
    assert not report_dir.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]


def test_bad_source_spec_is_a_usage_error(tmp_path, tiny_squad, capsys):
    model = tmp_path / "model"
    model.mkdir()
    assert main([str(model), "--data", str(tiny_squad), "--source", "bogus:x", "--report-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown power source 'bogus:x'" in err[0]
    assert not (tmp_path / "r").exists()


def test_cli_module_imports_nothing_heavy():
    code = ("import sys, elma.power.energy_cli as cli; cli.build_parser().format_help(); "
            "heavy = [m for m in ('torch', 'onnxruntime', 'matplotlib') "
            "if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr

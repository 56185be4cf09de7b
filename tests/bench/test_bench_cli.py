"""elma-bench on a tiny bundle: official metrics on the written files, exits, repeats, baselines, sweep front,
roofline, and bad input refused with exit 2 and no report.

One full run (repeat 2, sweep, baselines with the PyTorch eager model) is shared by the module's tests.
"""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from conftest import squad_payload  # noqa: E402

from elma.bench.cli import main  # noqa: E402
from elma.bench.runner import pareto_front, question_f1  # noqa: E402
from elma.data.squad import load_squad  # noqa: E402
from elma.metrics.squad_v2 import evaluate_files  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny-squad.json"
    path.write_text(json.dumps(squad_payload(copies=2)))
    return path


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A tiny random BertForQuestionAnswering checkpoint with the test WordPiece tokenizer (no download)."""
    pytest.importorskip("torch")
    from conftest import make_wordpiece_tokenizer, tiny_config
    from transformers import BertConfig, BertForQuestionAnswering, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("hf-qa")
    cfg = tiny_config("bert", num_hidden_layers=2)
    cfg.pop("model_type")
    BertForQuestionAnswering(BertConfig(**cfg)).save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=make_wordpiece_tokenizer(), cls_token="[CLS]", sep_token="[SEP]",
                            pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def full_run(tiny_bundles, data, hf_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    report_dir = out / "report"
    argv = [str(tiny_bundles.bundle("bert")), "--data", str(data), "--policy", "entropy:0.8,0.8", "--repeat", "2",
            "--sweep", "--measure-front", "--torch-model", str(tiny_bundles.model("bert")), "--hf-qa", str(hf_checkpoint),
            "--report-dir", str(report_dir),
            "--predictions-out", str(out / "p.json"), "--na-probs-out", str(out / "na.json"), "--no-progress"]
    assert main(argv) == 0
    return out, report_dir, json.loads((report_dir / "report.json").read_text())


def test_report_files_exist_and_parse(full_run):
    out, report_dir, report = full_run
    names = {p.name for p in report_dir.iterdir()}
    assert {"report.json", "report.md", "predictions.json", "na_probs.json"} <= names
    assert json.loads((out / "p.json").read_text()) == json.loads((report_dir / "predictions.json").read_text())
    assert report["model_load_ms"] > 0 and report["questions"] == 12
    assert 0 < report["peak_rss_mb"] <= report["peak_rss_end_mb"]
    assert not [p for p in report_dir.parent.iterdir() if p.name.startswith(".report")], "no temporary folder left"
    md = (report_dir / "report.md").read_text()
    for heading in ("## Official SQuAD 2.0 metrics", "## Exits", "## Baselines", "## Sweep", "## Roofline"):
        assert heading in md
    if importlib.util.find_spec("matplotlib") is None:  # the `bench` extra is missing: the report says so
        assert any("matplotlib" in n for n in report["notes"])
        return
    assert {"pareto_f1_vs_layers.png", "pareto_f1_vs_latency.png"} <= names
    assert (report_dir / "pareto_f1_vs_layers.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics_equal_the_official_scorer_on_the_written_files(full_run, data):
    out, _, report = full_run
    official = evaluate_files(data, out / "p.json", out / "na.json")
    assert dict(official) == pytest.approx(report["result"]["metrics"])
    probs = json.loads((out / "na.json").read_text())
    preds = json.loads((out / "p.json").read_text())
    assert all((probs[q] > 0.5) == (preds[q] == "") for q in preds), "na_prob above 0.5 exactly for no-answer"
    examples = load_squad(data)
    running = sum(question_f1(ex.answer_texts, preds[ex.qid]) for ex in examples) / len(examples)
    assert 100 * running == pytest.approx(official["f1"]), "the progress bar's running F1 ends at the official F1"


def test_histogram_and_saving(full_run):
    _, _, report = full_run
    r = report["result"]
    assert sum(r["exit_histogram"]) == report["questions"] and len(r["exit_histogram"]) == report["num_layers"]
    mean = sum((i + 1) * n for i, n in enumerate(r["exit_histogram"])) / report["questions"]
    assert r["mean_exit_layer"] == pytest.approx(mean)
    assert r["computation_saving"] == pytest.approx(1 - mean / report["num_layers"])
    lat = r["latency"]
    assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert r["throughput_qps"] > 0


def test_repeats_give_identical_metrics_and_a_spread(full_run):
    rep = full_run[2]["repeats"]
    assert rep["repeats"] == 2 and len(rep["mean_latency_ms"]) == 2 and rep["metrics_identical"] is True
    assert rep["min_mean_latency_ms"] <= rep["median_mean_latency_ms"] <= rep["max_mean_latency_ms"]


def test_baselines_static_at_every_layer_and_full_depth_agree(full_run):
    report = full_run[2]
    by_name = {b["name"]: b for b in report["baselines"]}
    L = report["num_layers"]
    for k in range(1, L + 1):
        assert by_name[f"static:{k}"]["mean_exit_layer"] == k and by_name[f"static:{k}"]["latency_source"] == "simulated"
    full = by_name["per-layer chain, full depth"]["metrics"]
    for name in ("fused graph fp32", "PyTorch eager, full depth (last exit)", f"static:{L}"):
        assert by_name[name]["latency_source"] == ("simulated" if name.startswith("static") else "measured")
        assert by_name[name]["metrics"]["f1"] == pytest.approx(full["f1"]), name
        assert by_name[name]["mean_exit_layer"] == L


def test_transformers_qa_baseline(full_run):
    rows = [b for b in full_run[2]["baselines"] if b["kind"] == "hf-qa"]
    assert len(rows) == 1 and rows[0]["latency_source"] == "measured"
    assert rows[0]["mean_exit_layer"] == 2 and len(rows[0]["exit_histogram"]) == 2  # the checkpoint's own depth
    assert 0 <= rows[0]["metrics"]["f1"] <= 100 and rows[0]["mean_gflops_per_question"] > 0
    assert sum("oneDNN off" in n for n in full_run[2]["notes"]) == 1  # the eager rows say how they ran, once


def test_sweep_front_is_non_dominated(full_run):
    points = full_run[2]["sweep"]
    assert {p["policy"] for p in points} == {"entropy", "maxprob", "patience", "similarity", "static"}
    for key, flag in (("mean_layers", "pareto_layers"), ("mean_latency_ms", "pareto_latency")):
        front = [p for p in points if p[flag]]
        assert front
        for p in points:
            dominated = any(q[key] <= p[key] and q["f1"] >= p["f1"] and (q[key] < p[key] or q["f1"] > p["f1"]) for q in points)
            assert p[flag] == (not dominated)


def test_front_points_timed_for_real_match_the_simulation(full_run):
    points = full_run[2]["sweep"]
    measured = [p for p in points if p["measured_latency_ms"] is not None]
    assert measured and all(p["pareto_layers"] for p in measured)
    assert len(measured) == len([p for p in points if p["pareto_layers"]])
    for p in measured:
        assert p["measured_f1"] == pytest.approx(p["f1"]), p["spec"]
        assert p["measured_latency_ms"] > 0


def test_roofline_rows(full_run):
    roof = full_run[2]["roofline"]
    assert roof["peak"]["gflops_per_s"] > 0 and roof["ffn_size_source"] == "config.json"
    names = [r["name"] for r in roof["rows"]]
    assert names[0].startswith("policy ") and "fused graph fp32" in names
    for r in roof["rows"]:
        assert r["latency_bound_ms"] > 0 and r["distance_x"] == pytest.approx(r["mean_latency_ms"] / r["latency_bound_ms"])


def test_static_policy_gives_its_layer_with_a_progress_bar(tiny_bundles, data, tmp_path, capsys):
    assert main([str(tiny_bundles.bundle("bert")), "--data", str(data), "--policy", "static:2", "--limit", "5",
                 "--no-baselines", "--report-dir", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["result"]["mean_exit_layer"] == 2 and report["result"]["exit_histogram"][1] == 5
    assert report["questions"] == 5 and report["baselines"] == [] and report["sweep"] == []
    captured = capsys.readouterr()
    assert "mean exit layer 2.00" in captured.out
    if importlib.util.find_spec("tqdm") is not None:
        assert "F1=" in captured.err, "the progress bar shows the running F1"


def _bad(tmp_path, payload):
    path = tmp_path / "bad.json"
    path.write_text(payload)
    return path


BAD_CASES = ["missing", "not-json", "not-squad", "empty", "bad-policy", "bad-limit", "front-without-sweep", "no-model",
             "compare-not-a-bundle", "bad-bootstrap"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_without_report(case, tiny_bundles, data, tmp_path, capsys):
    bundle, data_path, extra = str(tiny_bundles.bundle("bert")), str(data), []
    if case == "missing":
        data_path = str(tmp_path / "nope.json")
    elif case == "not-json":
        data_path = str(_bad(tmp_path, "{not json"))
    elif case == "not-squad":
        data_path = str(_bad(tmp_path, json.dumps({"rows": [1, 2]})))
    elif case == "empty":
        data_path = str(_bad(tmp_path, json.dumps({"version": "v2.0", "data": []})))
    elif case == "bad-policy":
        extra = ["--policy", "entropy:x"]
    elif case == "bad-limit":
        extra = ["--limit", "0"]
    elif case == "front-without-sweep":
        extra = ["--measure-front"]
    elif case == "compare-not-a-bundle":
        extra = ["--compare", str(tmp_path)]
    elif case == "bad-bootstrap":
        extra = ["--bootstrap", "0"]
    else:
        bundle = str(tmp_path / "no-bundle")
    report_dir = tmp_path / "report"
    assert main([bundle, "--data", data_path, "--report-dir", str(report_dir), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("elma-bench: error:")
    assert not report_dir.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]


def test_help_needs_no_heavy_imports(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--sweep" in capsys.readouterr().out


def test_pareto_front_by_hand():
    pts = [(1.0, 50.0), (2.0, 60.0), (2.0, 55.0), (3.0, 60.0), (0.5, 10.0), (1.0, 50.0)]
    assert pareto_front(pts) == [True, True, False, False, True, True]


def test_write_report_failure_leaves_nothing(tmp_path, monkeypatch):
    from elma.bench import report as rep

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(rep, "markdown", boom)
    run = type("R", (), {"report": type("X", (), {"sweep": [], "notes": [], "to_dict": lambda self: {}})(),
                         "predictions": {}, "na_probs": {}})()
    with pytest.raises(RuntimeError):
        rep.write_report(run, tmp_path / "out")
    assert list(Path(tmp_path).iterdir()) == []


def test_cli_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, elma.bench.cli; heavy = [m for m in ('torch', 'onnxruntime', 'matplotlib', 'tqdm', 'transformers') "
            "if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_model_folder_runs_on_torch_with_its_eager_baseline(tiny_bundles, data, tmp_path):
    assert main([str(tiny_bundles.model("bert")), "--data", str(data), "--limit", "3", "--policy", "maxprob:0.5",
                 "--no-progress", "--report-dir", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["model_kind"] == "model" and report["backend"].startswith("torch")
    by_kind = {b["kind"]: b for b in report["baselines"]}
    assert {"torch-eager", "fused", "chain"} <= set(by_kind)
    assert by_kind["fused"]["name"] == "fused graph torch", "a model folder's fused row is torch's full forward"
    assert by_kind["fused"]["metrics"]["f1"] == pytest.approx(by_kind["chain"]["metrics"]["f1"])


class ConstantMeter:
    """A sampler-paced fake power source: 5 W on one rail, stamped on time.monotonic (the sampler's clock)."""

    name = "constant"
    self_paced = False

    def start(self):
        return None

    def stop(self):
        return None

    def describe(self):
        return "constant 5000 mW (test)"

    def read(self):
        import time

        from elma.power.base import PowerSample

        return PowerSample(time.monotonic(), {"VDD_IN": 5000.0}, 5000.0)


def test_energy_window_per_timed_pass(tiny_bundles, data, tmp_path):
    from elma.bench.report import markdown, write_report
    from elma.bench.runner import BenchConfig, run_bench
    from elma.power.base import PowerMeter

    meter = type("Meter", (ConstantMeter, PowerMeter), {})()
    cfg = BenchConfig(model=str(tiny_bundles.bundle("bert")), data=str(data), policy="none", limit=4, repeat=2,
                      baselines=False, power_interval_ms=5)
    run = run_bench(cfg, meter=meter)
    report = run.report
    e = report.energy
    assert e is not None and len(e.windows) == 2 and e.source.startswith("constant")
    for per_q, power, window in zip(e.energy_per_question_mj, e.mean_power_mw, e.windows):
        assert power == pytest.approx(5000.0)
        assert per_q == pytest.approx(5000.0 * window.measured_s / 4)  # mW x s = mJ, over 4 questions
    assert "## Energy (timed passes)" in markdown(report)
    write_report(run, tmp_path / "r")
    saved = json.loads((tmp_path / "r" / "report.json").read_text())["energy"]
    assert saved["mean_power_mw"] == pytest.approx([5000.0, 5000.0]) and saved["windows"][0]["key"] == "pass-1"


# ---- side by side: --compare, ratios with intervals, the source model found from the manifest -------------------


@pytest.fixture(scope="module")
def compare_run(tiny_bundles, data, tmp_path_factory):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("compare")
    argv = [str(tiny_bundles.bundle("bert")), "--data", str(data), "--policy", "static:2", "--limit", "6",
            "--warmup", "1", "--compare", str(tiny_bundles.bundle("bert", "int8")), "--bootstrap", "300",
            "--report-dir", str(out / "r"), "--no-progress"]
    assert main(argv) == 0
    return out / "r", json.loads((out / "r" / "report.json").read_text())


def test_every_row_has_its_ratio_against_the_fused_graph_with_an_interval(compare_run):
    _, report = compare_run
    rows = [report["result"], *report["baselines"]]
    kinds = [r["kind"] for r in rows]
    for kind in ("policy", "chain", "fused", "chain-every-exit", "compare-fused", "compare-policy", "torch-eager", "static"):
        assert kind in kinds, kind
    assert report["reference"] == "fused graph fp32" and report["interleaved"] is True
    for r in rows:
        fused, chain = r["ratios"]
        assert fused["reference"] == "fused graph fp32" and chain["reference"] == "per-layer chain, full depth"
        assert fused["low"] <= fused["ratio"] <= fused["high"] and fused["resamples"] == 300
        assert r["latency_source"] == ("simulated" if r["kind"] == "static" else "measured")
    by_kind = {r["kind"]: r for r in rows}
    assert by_kind["fused"]["ratios"][0]["ratio"] == by_kind["fused"]["ratios"][0]["low"] == 1.0
    assert by_kind["compare-fused"]["name"].startswith("fused graph int8")
    assert by_kind["compare-policy"]["mean_exit_layer"] == 2, "the chosen policy on the other bundle too"
    fused_ms, policy_ms = by_kind["fused"]["latency"]["mean_ms"], by_kind["policy"]["latency"]["mean_ms"]
    assert by_kind["policy"]["ratios"][0]["ratio"] == pytest.approx(fused_ms / policy_ms)


def test_eager_model_is_the_one_the_manifest_records(compare_run):
    _, report = compare_run
    assert any(r["kind"] == "torch-eager" for r in report["baselines"])
    assert any("manifest records" in n for n in report["notes"])


def test_side_by_side_table_and_memory_in_the_report(compare_run):
    report_dir, report = compare_run
    md = (report_dir / "report.md").read_text()
    assert "## Side by side" in md and "[95% CI]" in md and "| simulated |" in md and "## Memory" in md
    assert set(report["peak_rss_stages_mb"]) == {"loaded", "recorded", "timed", "end"}
    assert 0 < report["sweep_record_bytes"] < 2000 * report["questions"]

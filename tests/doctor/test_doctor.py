"""elma doctor against fixture boards: L4T release files, /proc trees, INA3221 sysfs trees of both drivers, a fake
tegrastats and systemctl, a stand-in jtop module, pyvisa-sim, and stand-in tensorrt / onnxruntime / CUDA modules
(so the verdicts do not depend on what this machine has installed)."""

import json
import shutil
import sys
import textwrap
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "power"))
from power_helpers import E36311A_YAML, make_fake_tegrastats, make_jp4_sysfs, make_jp5_sysfs, tegrastats_lines  # noqa: E402
from test_jtop import fake_jtop_module  # noqa: E402

from elma.cli import main  # noqa: E402
from elma.doctor import MISSING, OK, WRONG, DoctorConfig, run_doctor  # noqa: E402
from elma.doctor.system import parse_l4t_release  # noqa: E402
from elma.runtime.bundle import update_manifest  # noqa: E402

TX2_RELEASE = "# R32 (release), REVISION: 7.1, GCID: 29689809, BOARD: t186ref, EABI: aarch64, DATE: Wed Feb  9 19:18:03 UTC 2022\n"
ORIN_RELEASE = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"


# ---- stand-in modules ---------------------------------------------------------------------------------------------

def use_stack(monkeypatch, trt="8.2.1.8", ort_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                          "CPUExecutionProvider"), gpu=("NVIDIA Tegra X2", 6, 2)):
    """Stand-ins for tensorrt, onnxruntime and cuda-python; None for a module makes its import fail."""
    if trt is None:
        monkeypatch.setitem(sys.modules, "tensorrt", None)
    else:
        monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=trt))
    if ort_providers is None:
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
    else:
        ort = types.ModuleType("onnxruntime")
        ort.__version__ = "1.16.0"
        ort.get_available_providers = lambda: list(ort_providers)
        monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)
    if gpu is not None:
        rt = types.ModuleType("cuda.bindings.runtime")
        name, major, minor = gpu
        rt.cudaGetDeviceProperties = lambda device: (0, types.SimpleNamespace(name=name.encode() + b"\x00", major=major,
                                                                               minor=minor))
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime = rt
        pkg = types.ModuleType("cuda")
        pkg.bindings, pkg.__version__ = bindings, "12.6.0"
        for mod_name, mod in (("cuda", pkg), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
            monkeypatch.setitem(sys.modules, mod_name, mod)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def fake_systemctl(tmp_path, state="active"):
    script = write(tmp_path / "systemctl.py", textwrap.dedent(f"""
        import sys
        assert sys.argv[1:] == ["is-active", "jtop.service"], sys.argv
        print({state!r})
        sys.exit(0 if {state!r} == "active" else 3)
    """))
    return (sys.executable, str(script))


def tx2_board(tmp_path, monkeypatch, jtop_module=None, tegrastats_lines_=None):
    """A TX2 on JetPack 4.6.1: release file, /proc, ina3221x rails, tegrastats, jtop socket and service."""
    root = tmp_path / "board"
    write(root / "etc" / "nv_tegra_release", TX2_RELEASE)
    write(root / "proc" / "meminfo", "MemTotal:        8039840 kB\nMemAvailable:    5120000 kB\n")
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "proc" / "device-tree" / "model").write_bytes(b"NVIDIA Jetson TX2\x00")
    make_jp4_sysfs(root / "sys", {"0-0041/iio:device1": [("VDD_IN", 3140), ("VDD_SYS_CPU", 536), ("VDD_SYS_DDR", 557)],
                                  "0-0040/iio:device0": [("VDD_SYS_GPU", 153), ("VDD_SYS_SOC", 536)]})
    write(root / "run" / "jtop.sock", "")  # a socket file in place: JtopMeter checks it exists, the stand-in connects
    monkeypatch.setitem(sys.modules, "jtop", jtop_module or fake_jtop_module(power={
        "rail": {"VDD_IN": {"online": True, "power": 3100}, "VDD_SYS_GPU": {"online": True, "power": 150}}, "tot": {}}))
    tegrastats = make_fake_tegrastats(tmp_path, tegrastats_lines_ or tegrastats_lines("tx2_jp4"))
    return DoctorConfig(etc_root=str(root), proc_root=str(root / "proc"), sysfs_root=str(root / "sys"),
                        jtop_socket=str(root / "run" / "jtop.sock"), tegrastats_cmd=tuple(tegrastats),
                        systemctl_cmd=fake_systemctl(tmp_path), interval_ms=50)


def with_engines(bundle: Path, trt="8.2.1.8", gpu=("NVIDIA Tegra X2", "6.2")) -> Path:
    plans = {}
    for onnx in sorted(p.name for p in bundle.glob("*.onnx")):
        plans[onnx] = onnx[:-5] + ".plan"
        (bundle / plans[onnx]).write_bytes(b"engine of " + onnx.encode())
    update_manifest(bundle, {"engines": {"tensorrt_version": trt, "gpu_name": gpu[0], "compute_capability": gpu[1],
                                         "plans": plans}}, new_files=list(plans.values()))
    return bundle


@pytest.fixture
def bundle(tiny_bundles, tmp_path):
    return Path(shutil.copytree(tiny_bundles.bundle("bert"), tmp_path / "bundle"))


# ---- tests --------------------------------------------------------------------------------------------------------

def test_l4t_release_lines_parse():
    assert parse_l4t_release(TX2_RELEASE) == (32, 7, 1)
    assert parse_l4t_release(ORIN_RELEASE) == (36, 4, 3)
    assert parse_l4t_release("garbage") is None


def test_a_ready_tx2_can_answer_with_tensorrt(tmp_path, monkeypatch, bundle):
    use_stack(monkeypatch)
    config = tx2_board(tmp_path, monkeypatch)
    report = run_doctor(DoctorConfig(**{**vars(config), "bundle": str(with_engines(bundle))}))
    statuses = {c.name: c.status for c in report.checks}
    assert set(statuses.values()) == {OK}, report.to_text()
    assert report.exit_code == 0 and report.backends == {"tensorrt": True, "onnxruntime": True}
    assert "L4T R32.7.1 = JetPack 4.6.1 on NVIDIA Jetson TX2" in report.check("l4t").detail
    assert report.check("gpu").detail == "NVIDIA Tegra X2, compute capability 6.2"
    ina = report.check("power: ina3221").sample
    assert ina["rail_power_mw"]["VDD_IN"] == 3140 and ina["total_power_mw"] == 3140, "TX2: VDD_IN is the total"
    assert report.check("power: tegrastats").sample["total_power_mw"] == 3140  # first line of tx2_jp4.log
    assert report.check("power: jtop").sample["rail_power_mw"] == {"VDD_IN": 3100, "VDD_SYS_GPU": 150}
    assert "jtop.service active" in report.check("power: jtop").detail
    assert "5000 MiB available" in report.check("memory").detail


def test_engines_of_another_board_are_wrong_with_the_rebuild_command(tmp_path, monkeypatch, bundle):
    use_stack(monkeypatch)
    config = tx2_board(tmp_path, monkeypatch)
    report = run_doctor(DoctorConfig(**{**vars(config), "bundle": str(with_engines(bundle, gpu=("Orin", "8.7")))}))
    engines = report.check("engines")
    assert engines.status == WRONG and engines.fix == f"elma build-engines {bundle}"
    assert "GPU Orin" in engines.detail
    assert report.exit_code == 3 and report.backends == {"tensorrt": False, "onnxruntime": True}
    assert "meanwhile: --backend onnxruntime" in report.to_text()


def test_a_bundle_without_engines_or_with_an_altered_file_cannot_answer(tmp_path, monkeypatch, bundle):
    use_stack(monkeypatch)
    config = tx2_board(tmp_path, monkeypatch)
    report = run_doctor(DoctorConfig(**{**vars(config), "bundle": str(bundle)}))
    assert report.check("engines").status == MISSING and report.check("engines").fix == f"elma build-engines {bundle}"
    assert report.exit_code == 3
    with open(bundle / "exit1.onnx", "ab") as f:
        f.write(b"\0")
    report = run_doctor(DoctorConfig(**{**vars(config), "bundle": str(bundle)}))
    assert report.check("bundle").status == WRONG and "exit1.onnx" in report.check("bundle").detail
    assert "rsync" in report.check("bundle").fix and report.exit_code == 3
    assert report.backends == {"tensorrt": False, "onnxruntime": False}


def test_a_bundle_not_copied_yet_is_missing(tmp_path, monkeypatch):
    use_stack(monkeypatch)
    config = tx2_board(tmp_path, monkeypatch)
    report = run_doctor(DoctorConfig(**{**vars(config), "bundle": str(tmp_path / "not-here")}))
    assert report.check("bundle").status == MISSING and "rsync" in report.check("bundle").fix
    assert report.check("disk").status == OK and str(tmp_path) in report.check("disk").detail
    assert report.exit_code == 3


def test_wrong_versions_and_a_cpu_onnxruntime_on_a_jetson_are_wrong(tmp_path, monkeypatch):
    use_stack(monkeypatch, trt="11.0.0", ort_providers=("CPUExecutionProvider",))
    report = run_doctor(tx2_board(tmp_path, monkeypatch))
    assert report.check("tensorrt").status == WRONG and "TensorRT 11.0.0 is not supported" in report.check("tensorrt").detail
    ort = report.check("onnxruntime")
    assert ort.status == WRONG and "CPU only" in ort.detail and "Jetson Zoo" in ort.fix
    assert report.exit_code == 3


def test_power_sources_there_but_unreadable_are_wrong(tmp_path, monkeypatch):
    use_stack(monkeypatch)
    config = tx2_board(tmp_path, monkeypatch, jtop_module=fake_jtop_module(start_error="Please run: sudo jtop --install-service"),
                       tegrastats_lines_=["RAM 2020/7852MB (lfb 1164x4MB) CPU [9%@345] EMC_FREQ 0% GR3D_FREQ 0%"] * 3)
    shutil.rmtree(Path(config.sysfs_root) / "bus/i2c/drivers/ina3221x")
    make_jp5_sysfs(Path(config.sysfs_root), {"1-0040/hwmon/hwmon3": [("VDD_GPU_SOC", 19120, 120)]})
    (Path(config.sysfs_root) / "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/curr1_input").write_text("not a number\n")
    report = run_doctor(DoctorConfig(**{**vars(config), "systemctl_cmd": fake_systemctl(tmp_path, "inactive")}))
    jtop = report.check("power: jtop")
    assert jtop.status == WRONG and "sudo jtop --install-service" in jtop.detail and "jtop.service inactive" in jtop.detail
    assert report.check("power: tegrastats").status == WRONG
    ina = report.check("power: ina3221")
    assert ina.status == WRONG and "VDD_GPU_SOC" in ina.detail and "unreadable" in ina.detail
    assert report.exit_code == 0, "power sources do not decide whether the board can answer"


def test_a_keysight_supply_is_read_once(tmp_path, monkeypatch):
    pytest.importorskip("pyvisa_sim", reason="pyvisa-sim not installed: pip install -e '.[dev]'")
    use_stack(monkeypatch)
    config = tx2_board(tmp_path, monkeypatch)
    report = run_doctor(DoctorConfig(**{**vars(config), "keysight": "TCPIP0::192.0.2.10::5025::SOCKET@1,2",
                                        "visa_library": f"{E36311A_YAML}@sim"}))
    keysight = report.check("power: keysight")
    assert keysight.status == OK and set(keysight.sample["rail_power_mw"]) == {"CH1", "CH2"}
    report = run_doctor(DoctorConfig(**{**vars(config), "keysight": "TCPIP0::192.0.2.99::5025::SOCKET",
                                        "visa_library": f"{E36311A_YAML}@sim"}))
    assert report.check("power: keysight").status == WRONG


def test_elma_doctor_json_says_what_is_missing_and_exits_3(tmp_path, monkeypatch, capsys):
    """What a machine without a GPU stack sees (this one): every backend and source named, exit status 3."""
    use_stack(monkeypatch, trt=None, ort_providers=("CPUExecutionProvider",), gpu=None)
    code = main(["doctor", "--json", "--sysfs-root", str(tmp_path), "--tegrastats-cmd", "no-such-tegrastats",
                 "--jtop-socket", str(tmp_path / "jtop.sock")])
    out = json.loads(capsys.readouterr().out)
    assert code == 3 and out["exit_code"] == 3 and out["best_backend"] == "tensorrt"
    assert {"tensorrt", "cuda binding", "gpu", "power: tegrastats", "power: ina3221", "power: jtop"} <= set(out["missing"])
    assert out["backends"] == {"tensorrt": False, "onnxruntime": True}
    by_name = {c["name"]: c for c in out["checks"]}
    assert by_name["tensorrt"]["fix"].startswith("TensorRT comes with JetPack")
    assert all(c["fix"] for c in out["checks"] if c["status"] != OK), "every line that is not OK says how to fix it"


def test_bad_doctor_arguments_exit_2(capsys):
    assert main(["doctor", "--tegrastats-cmd", ""]) == 2
    assert "tegrastats_cmd must name a command" in capsys.readouterr().err

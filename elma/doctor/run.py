"""``run_doctor``: every check in order, and the verdict.

The best backend of a board with an NVIDIA GPU is TensorRT; ``elma doctor`` exits 0 only when it can
answer: TensorRT 8.0-10.x, a CUDA binding, the GPU, and (with ``--bundle``) a bundle whose files verify
and whose engines were built for this TensorRT and GPU. The onnxruntime verdict is reported beside it (what
to run with meanwhile). Power sources never decide the exit status: a board answers without them.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from elma.doctor import power_checks, stack, system
from elma.doctor.report import Check, DoctorReport

EXIT_READY, EXIT_NOT_READY = 0, 3


@dataclass(frozen=True)
class DoctorConfig:
    """What to check and where; every hardware path injectable (tests use fixture trees and stand-in commands)."""

    bundle: Optional[str] = None  # bundle folder to verify (checksums, engines); None: skip those checks
    keysight: Optional[str] = None  # VISA_RESOURCE[@CH[,CH]] of a Keysight supply to read once; None: skip
    visa_library: str = "@py"  # PyVISA backend ("@py", "", "file.yaml@sim")
    visa_timeout_ms: int = 2000  # SCPI query timeout, ms
    tegrastats_cmd: Tuple[str, ...] = ("tegrastats",)  # how to run tegrastats (e.g. ("sudo", "tegrastats"))
    sysfs_root: str = "/sys"  # where the INA3221 driver folders live
    jtop_socket: str = "/run/jtop.sock"  # jtop.service's socket
    systemctl_cmd: Tuple[str, ...] = ("systemctl",)  # asks `is-active jtop.service`
    etc_root: str = "/"  # root holding etc/nv_tegra_release
    proc_root: str = "/proc"  # meminfo and device-tree/model
    interval_ms: int = 100  # power sampling period for the one sample, ms

    def __post_init__(self) -> None:
        if self.interval_ms <= 0 or self.visa_timeout_ms <= 0:
            raise ValueError(f"interval_ms and visa_timeout_ms must be positive (got {self.interval_ms}, "
                             f"{self.visa_timeout_ms})")
        if not self.tegrastats_cmd:
            raise ValueError("tegrastats_cmd must name a command")


def run_doctor(config: DoctorConfig = DoctorConfig()) -> DoctorReport:
    began = time.monotonic()
    checks: List[Check] = [system.check_python(), system.check_elma()]
    l4t = system.check_l4t(Path(config.etc_root), Path(config.proc_root))
    checks.append(l4t)
    on_jetson = l4t.ok
    ort_check, _providers = stack.check_onnxruntime(on_jetson)
    trt_check, trt_version = stack.check_tensorrt()
    binding_check, binding = stack.check_cuda_binding()
    gpu_check, gpu = stack.check_gpu(binding)
    checks += [ort_check, trt_check, binding_check, gpu_check]
    bundle_ok = True
    engines_ok = True
    if config.bundle is not None:
        bundle_path = Path(config.bundle)
        bundle_check, bundle = stack.check_bundle(bundle_path)
        checks.append(bundle_check)
        bundle_ok = bundle_check.ok
        if bundle is not None:
            engines = stack.check_engines(bundle, bundle_path, trt_version, gpu)
            checks.append(engines)
            engines_ok = engines.ok
        else:
            engines_ok = False
    checks += power_checks.check_power(Path(config.sysfs_root), config.tegrastats_cmd, Path(config.jtop_socket),
                                       config.systemctl_cmd, config.keysight, config.visa_library, config.interval_ms,
                                       config.visa_timeout_ms)
    checks.append(system.check_memory(Path(config.proc_root)))
    checks.append(system.check_disk(Path(config.bundle) if config.bundle else Path.cwd()))
    backends: Dict[str, bool] = {
        "tensorrt": trt_check.ok and binding_check.ok and gpu_check.ok and bundle_ok and engines_ok,
        "onnxruntime": ort_check.ok and bundle_ok,
    }
    exit_code = EXIT_READY if backends["tensorrt"] else EXIT_NOT_READY
    return DoctorReport(checks, "tensorrt", backends, exit_code, time.monotonic() - began)

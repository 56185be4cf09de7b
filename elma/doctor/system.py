"""Checks of the board itself: Python and elma versions, the L4T/JetPack release, free memory and disk."""

import re
import shutil
import sys
from pathlib import Path
from typing import Optional, Tuple

from elma.doctor.report import MISSING, OK, WRONG, Check

MIN_PYTHON = (3, 6)  # setup.cfg python_requires (JetPack 4.6 on the TX2)
# L4T release -> JetPack (shared/JETSON-NOTES.md section 5; NVIDIA's JetPack archive). Others print as "R<x>.<y>.<z>".
JETPACK_OF_L4T = {"32.6.1": "4.6", "32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4",
                  "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2", "36.3.0": "6.0", "36.4.0": "6.1",
                  "36.4.3": "6.2"}
SUPPORTED_L4T_MAJORS = (32, 35, 36)  # JetPack 4.6.x (TX2, Nano, Xavier), 5.x, 6.x
_RELEASE_RE = re.compile(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)")
MIN_FREE_MEMORY_MB = 512  # below this an engine load or a bundle's sessions may not fit (unified memory on a Jetson)
MIN_FREE_DISK_MB = 1024  # room for engines (one plan per graph) and the offload queue
FLASH_HINT = "flash JetPack 4.6.x (TX2/Nano/Xavier), 5.x or 6.x with NVIDIA SDK Manager (docs/jetson.md, 'Flash')"


def check_python(version: Tuple[int, ...] = tuple(sys.version_info[:3])) -> Check:
    text = ".".join(str(v) for v in version)
    if tuple(version[:2]) < MIN_PYTHON:
        return Check("python", WRONG, f"Python {text} (elma's device side is checked for {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+)",
                     "use the Dockerfile.l4t image of your JetPack release (docs/jetson.md, 'Container')")
    return Check("python", OK, f"Python {text} ({sys.executable})")


def check_elma() -> Check:
    import elma

    return Check("elma", OK, f"elma {elma.__version__} ({Path(elma.__file__).parent})")


def parse_l4t_release(text: str) -> Optional[Tuple[int, int, int]]:
    """``# R32 (release), REVISION: 7.1, GCID: ...`` -> (32, 7, 1); None if the text is not an L4T release line."""
    match = _RELEASE_RE.search(text)
    return tuple(int(g) for g in match.groups()) if match else None  # type: ignore[return-value]


def l4t_release(etc_root: Path) -> Optional[Tuple[int, int, int]]:
    path = Path(etc_root) / "etc" / "nv_tegra_release"
    try:
        return parse_l4t_release(path.read_text(encoding="ascii", errors="replace"))
    except OSError:
        return None


def board_model(proc_root: Path) -> str:
    try:  # the device tree's model string, e.g. "NVIDIA Jetson TX2"; NUL-terminated
        return (Path(proc_root) / "device-tree" / "model").read_bytes().decode("ascii", "replace").strip("\x00\n ")
    except OSError:
        return ""


def check_l4t(etc_root: Path, proc_root: Path) -> Check:
    release = l4t_release(etc_root)
    path = Path(etc_root) / "etc" / "nv_tegra_release"
    if release is None:
        return Check("l4t", MISSING, f"no L4T release in {path}: not a Jetson (or not its root file system)", FLASH_HINT)
    text = "R{}.{}.{}".format(*release)
    jetpack = JETPACK_OF_L4T.get("{}.{}.{}".format(*release))
    model = board_model(proc_root)
    detail = f"L4T {text}" + (f" = JetPack {jetpack}" if jetpack else "") + (f" on {model}" if model else "")
    if release[0] not in SUPPORTED_L4T_MAJORS or (release[0] == 32 and release[1] < 6):
        return Check("l4t", WRONG, detail + " (elma supports L4T R32.6+ / R35 / R36)", FLASH_HINT)
    return Check("l4t", OK, detail)


def free_memory_mb(proc_root: Path) -> Optional[float]:
    """MemAvailable of ``/proc/meminfo`` in MiB (None if unreadable)."""
    try:
        for line in (Path(proc_root) / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(proc_root: Path) -> Check:
    free_mb = free_memory_mb(proc_root)
    if free_mb is None:
        return Check("memory", MISSING, f"cannot read {Path(proc_root) / 'meminfo'}", "run on the board (Linux /proc)")
    if free_mb < MIN_FREE_MEMORY_MB:
        return Check("memory", WRONG, f"{free_mb:.0f} MiB available (below {MIN_FREE_MEMORY_MB} MiB)",
                     "stop other GPU processes or the desktop (sudo systemctl isolate multi-user.target); "
                     "add swap for `elma build-engines`")
    return Check("memory", OK, f"{free_mb:.0f} MiB available")


def check_disk(path: Path) -> Check:
    """Free space where ``path`` is (or would be: its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(str(path))
    except OSError as err:
        return Check("disk", MISSING, f"cannot stat {path}: {err}", "give an existing --bundle folder")
    free_mb = usage.free / 2**20
    if free_mb < MIN_FREE_DISK_MB:
        return Check("disk", WRONG, f"{free_mb:.0f} MiB free on {path} (below {MIN_FREE_DISK_MB} MiB)",
                     "free space (old engines: rm BUNDLE/*.plan, then `elma build-engines BUNDLE`)")
    return Check("disk", OK, f"{free_mb / 1024:.1f} GiB free on {path}")

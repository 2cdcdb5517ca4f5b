"""Where a base model runs and in what number format: ``--device``, ``--dtype``, ``--quantize``.

:class:`HardwareSpec` is what a user asks for (a CLI flag, a ``hardware`` section of a training
config, the Flower run config); :func:`resolve_hardware` turns it into a :class:`Hardware` this
machine can honour, or refuses in one line. ``auto`` means:

- **device**: the first CUDA GPU when torch sees one, else the CPU (MPS only when asked for:
  its kernels for training are incomplete);
- **dtype**: bfloat16 on a CUDA card that supports it (compute capability 8.0+: A100, H100,
  RTX 30xx...), else float32. float32 on CPUs because bf16 runs about 7x slower than float32 on
  CPUs without bf16 units (measured on this project's Zen3 machines), and on older cards
  because float16 training needs loss scaling, which the trainer does not do;
- **quantize** is never automatic: ``4bit`` (bitsandbytes NF4, i.e. QLoRA) and ``8bit`` need a
  CUDA GPU and the ``feddx[gpu]`` extra.

Gradient checkpointing "pays" on a GPU (memory, not compute, limits the batch there) and not on
a CPU (it recomputes every layer for ~30% more time): :attr:`Hardware.gradient_checkpointing`
is the default a training run takes when its config leaves the choice open.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import field_validator

from feddx.errors import ConfigError
from feddx.settings import Settings

DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
QuantizeName = Literal["none", "8bit", "4bit"]
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class HardwareSpec(Settings):
    """The device, dtype and quantization a run asks for (resolved by :func:`resolve_hardware`).

    Parameters
    ----------
    device
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    dtype
        ``auto``, ``float32``, ``bfloat16`` or ``float16``: the base weights' dtype (and the
        compute dtype of a quantized base). LoRA weights always train in float32.
    quantize
        ``none``, ``8bit`` or ``4bit`` (NF4 with double quantization: QLoRA). CUDA only.
    """

    settings_name: ClassVar[str] = "hardware"

    device: str = "auto"
    dtype: DtypeName = "auto"
    quantize: QuantizeName = "none"

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE_RE.match(value):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value


@dataclass(frozen=True)
class Hardware:
    """A resolved :class:`HardwareSpec`: a concrete device (``cpu``, ``cuda:0``, ``mps``), a
    concrete dtype, and the quantization."""

    device: str = "cpu"
    dtype: str = "float32"
    quantize: str = "none"

    @property
    def is_gpu(self) -> bool:
        return self.device != "cpu"

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether training should recompute activations by default (see the module doc)."""
        return self.is_gpu

    @property
    def torch_dtype(self) -> Any:
        import torch

        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            self.dtype
        ]

    def describe(self) -> str:
        """One line for logs and result tables, e.g. ``cuda:0 bfloat16 4bit``."""
        return " ".join(
            [self.device, self.dtype] + ([self.quantize] if self.quantize != "none" else [])
        )

    def to_dict(self) -> dict[str, str]:
        return {"device": self.device, "dtype": self.dtype, "quantize": self.quantize}


CPU_FLOAT32 = Hardware()
"""Today's default and the fastest choice on CPUs without bf16 units."""


def _cuda_count() -> int:
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _resolve_device(asked: str) -> str:
    n_cuda = _cuda_count()
    if asked == "auto":
        return "cuda:0" if n_cuda else "cpu"
    if asked.startswith("cuda"):
        if not n_cuda:
            raise ConfigError(
                f"device {asked!r}: torch sees no CUDA GPU on this machine "
                "(use --device cpu, or a CUDA build of torch on a GPU machine)"
            )
        index = int(asked.split(":")[1]) if ":" in asked else 0
        if index >= n_cuda:
            raise ConfigError(f"device {asked!r}: this machine has {n_cuda} CUDA GPU(s)")
        return f"cuda:{index}"
    if asked == "mps" and not _mps_available():
        raise ConfigError("device 'mps': torch sees no Apple GPU (MPS) on this machine")
    return asked


def _bf16_supported(device: str) -> bool:
    import torch

    return device.startswith("cuda") and bool(torch.cuda.is_bf16_supported())


def resolve_hardware(spec: HardwareSpec | None = None) -> Hardware:
    """The :class:`Hardware` ``spec`` asks for on this machine (``None``: all ``auto``).

    Raises :class:`~feddx.errors.ConfigError` in one line for a CUDA or MPS device this machine
    lacks, for quantization without a CUDA device, and for quantization without bitsandbytes
    (``pip install 'feddx[gpu]'``).
    """
    spec = spec or HardwareSpec()
    if spec.quantize != "none" and spec.device in ("auto", "cpu", "mps") and not _cuda_count():
        raise ConfigError(
            f"quantize {spec.quantize!r} needs a CUDA GPU (bitsandbytes); this machine has none "
            "(use --quantize none)"
        )
    device = _resolve_device(spec.device)
    if spec.quantize != "none":
        if not device.startswith("cuda"):
            raise ConfigError(f"quantize {spec.quantize!r} needs a CUDA device, not {device!r}")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                f"quantize {spec.quantize!r} needs bitsandbytes: pip install 'feddx[gpu]'"
            )
    dtype = spec.dtype
    if dtype == "auto":
        dtype = "bfloat16" if _bf16_supported(device) else "float32"
    return Hardware(device=device, dtype=dtype, quantize=spec.quantize)


__all__ = [
    "CPU_FLOAT32",
    "DtypeName",
    "Hardware",
    "HardwareSpec",
    "QuantizeName",
    "resolve_hardware",
]

"""The ``--device``, ``--dtype`` and ``--quantize`` options shared by ``feddx train``,
``feddx evaluate`` and ``feddx serve`` (see :mod:`feddx.model.hardware`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from feddx.model.hardware import HardwareSpec

Device = Annotated[
    str | None,
    typer.Option(
        help="auto, cpu, cuda, cuda:N or mps (auto: the first CUDA GPU if any, else the CPU)."
    ),
]
Dtype = Annotated[
    str | None,
    typer.Option(
        help="auto, float32, bfloat16 or float16 (auto: bf16 on GPUs that support it, "
        "else float32)."
    ),
]
Quantize = Annotated[
    str | None,
    typer.Option(help="none, 8bit or 4bit (bitsandbytes NF4: QLoRA; CUDA and feddx[gpu] only)."),
]


def hardware_overrides(
    device: str | None, dtype: str | None, quantize: str | None
) -> dict[str, Any]:
    """The options given on the command line, as a ``hardware`` settings mapping."""
    given = {"device": device, "dtype": dtype, "quantize": quantize}
    return {k: v for k, v in given.items() if v is not None}


def hardware_spec(device: str | None, dtype: str | None, quantize: str | None) -> HardwareSpec:
    """The :class:`~feddx.model.hardware.HardwareSpec` the options ask for (``auto`` where not
    given), or a one-line :class:`~feddx.errors.ConfigError` naming the bad option."""
    from feddx.model.hardware import HardwareSpec

    return HardwareSpec.from_mapping(
        hardware_overrides(device, dtype, quantize), origin="command line: hardware"
    )

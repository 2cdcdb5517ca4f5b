"""The one tiny federation of the unit tests (shared by every test package): two IID clients,
one round, a rank-4 LoRA on the tiny model's top layer and 64-token prompts, so a real
ServerApp/ClientApp round runs in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_federation_config(model: Path, data: str, **overrides: Any) -> Any:
    """The :class:`~feddx.federated.config.FederatedConfig` of that federation of ``model`` on
    ``data`` (a ``SOURCE:PATH`` spec); ``overrides`` set what a test varies (evaluation cases,
    client counts, output folders)."""
    from feddx.federated.config import FederatedConfig

    settings: dict[str, Any] = {
        "model": str(model),
        "data": data,
        "validation_fraction": 0.25,
        "num_clients": 2,
        "partition": "iid",
        "num_rounds": 1,
        "eval_every": 1,
        "min_train_clients": 2,
        "min_available_clients": 2,
        "local_epochs": 1,
        "batch_size": 4,
        "max_prompt_tokens": 64,
        "lora_rank": 4,
        "lora_alpha": 8.0,
        "lora_top_layers": 1,
    }
    return FederatedConfig(**{**settings, **overrides})

"""The trainer on the real SmolLM2-135M: a few steps lower the loss, and the split forward
(cached frozen layers, pruned last layer) is verified against the model's own forward."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import make_cases  # type: ignore[import-not-found]

from feddx.model.adapter import LoraSpec, attach_lora
from feddx.train.config import TrainConfig
from feddx.train.trainer import train_adapter


@pytest.mark.smollm2
def test_a_few_steps_on_smollm2_lower_the_loss() -> None:
    from feddx.model.loading import load_base_model

    loaded = load_base_model()
    spec = LoraSpec(top_layers=2, target_modules=("q_proj", "v_proj", "o_proj", "down_proj"))
    torch.manual_seed(0)
    model = attach_lora(loaded.model, spec)
    cases = make_cases(16)
    config = TrainConfig(lora=spec, learning_rate=2e-3, epochs=3, batch_size=4, warmup_ratio=0.0)
    result = train_adapter(model, loaded.tokenizer, cases, config)
    assert result.stats["split_layer"] == 28 and result.stats["pruned_last_layer"] == 1
    assert result.stats["self_check_max_rel_diff"] < 1e-4
    first, last = result.loss_history[:4], result.loss_history[-4:]
    assert sum(last) / 4 < 0.5 * sum(first) / 4

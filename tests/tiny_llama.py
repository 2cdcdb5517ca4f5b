"""The one tiny random Llama of the unit tests (shared by every test package)."""

from __future__ import annotations

from typing import Any


def make_tiny_llama(
    vocab_size: int, layers: int = 2, seed: int = 0, *, initializer_range: float = 0.02
) -> Any:
    """A randomly initialised float32 Llama (hidden 32, 4 heads, 2 KV heads) in eval mode,
    small enough to train in a unit test; ``seed`` fixes its weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
    )
    return LlamaForCausalLM(config).eval()

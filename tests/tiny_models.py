"""Tiny random causal LMs of every family feddx must train and serve (built in-process from a
config, no download): one builder per family, all with hidden size 32, 2 decoder layers and
the test tokenizer's vocabulary.

Each config sets only what differs from its family's defaults to keep the model small; the
architecture-specific parts (Gemma 3's sliding/global layers and scaled embeddings, Phi-3's
fused projections, GPT-2's Conv1D, Bloom's ALiBi, GPT-Neo's local attention) are the
families' own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tiny_llama import make_tiny_llama

_HEADS = {"num_attention_heads": 4, "num_key_value_heads": 2}
# GPT-2's and GPT-Neo's default special tokens (50256) lie outside the test vocabulary.
_IN_VOCAB = {"bos_token_id": 0, "eos_token_id": 0}
_LLAMA_LIKE = {"hidden_size": 32, "intermediate_size": 64, "max_position_embeddings": 1024}


def _llama(vocab: int, layers: int, **extra: Any) -> Any:
    return make_tiny_llama(vocab, layers, initializer_range=extra.get("initializer_range", 0.02))


def _qwen2(vocab: int, layers: int, **extra: Any) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab, num_hidden_layers=layers, **_LLAMA_LIKE, **_HEADS, **extra
    )
    return Qwen2ForCausalLM(config)


def _mistral(vocab: int, layers: int, **extra: Any) -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=vocab, num_hidden_layers=layers, **_LLAMA_LIKE, **_HEADS, **extra
    )
    return MistralForCausalLM(config)


def _gemma3(vocab: int, layers: int, **extra: Any) -> Any:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    settings: dict[str, Any] = {
        "head_dim": 8,
        "query_pre_attn_scalar": 8,
        "sliding_window": 512,
        # Gemma 3 alternates sliding-window and global layers (5:1 in the real models).
        "layer_types": ["sliding_attention", "full_attention"] * (layers // 2)
        + ["sliding_attention"] * (layers % 2),
        **extra,
    }
    config = Gemma3TextConfig(
        vocab_size=vocab, num_hidden_layers=layers, **_LLAMA_LIKE, **_HEADS, **settings
    )
    return Gemma3ForCausalLM(config)


def _phi3(vocab: int, layers: int, **extra: Any) -> Any:
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(
        vocab_size=vocab,
        num_hidden_layers=layers,
        pad_token_id=0,
        **_LLAMA_LIKE,
        **_HEADS,
        **extra,
    )
    return Phi3ForCausalLM(config)


def _gpt_neo(vocab: int, layers: int, **extra: Any) -> Any:
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    config = GPTNeoConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_layers=layers,
        num_heads=4,
        # Alternating global and local (windowed) attention, as in the released models.
        attention_types=[[["global", "local"], layers // 2], [["global"], layers % 2]],
        max_position_embeddings=1024,
        **{**_IN_VOCAB, **extra},
    )
    return GPTNeoForCausalLM(config)


def _gpt2(vocab: int, layers: int, **extra: Any) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab,
        n_embd=32,
        n_layer=layers,
        n_head=4,
        n_positions=1024,
        **{**_IN_VOCAB, **extra},
    )
    return GPT2LMHeadModel(config)


def _bloom(vocab: int, layers: int, **extra: Any) -> Any:
    from transformers import BloomConfig, BloomForCausalLM

    config = BloomConfig(vocab_size=vocab, hidden_size=32, n_layer=layers, n_head=4, **extra)
    return BloomForCausalLM(config)


BUILDERS: dict[str, Callable[..., Any]] = {
    "llama": _llama,
    "qwen2": _qwen2,
    "mistral": _mistral,
    "gemma3": _gemma3,
    "phi3": _phi3,
    "gpt_neo": _gpt_neo,
    "gpt2": _gpt2,
    "bloom": _bloom,
}
FAMILIES = tuple(BUILDERS)


def make_tiny_model(
    family: str, vocab_size: int, layers: int = 2, seed: int = 0, **extra: Any
) -> Any:
    """A randomly initialised float32 causal LM of ``family`` (one of :data:`FAMILIES`) in eval
    mode; ``seed`` fixes its weights and ``extra`` overrides config fields."""
    import torch

    torch.manual_seed(seed)
    return BUILDERS[family](vocab_size, layers, **extra).eval()

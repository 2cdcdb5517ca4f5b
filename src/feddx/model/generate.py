"""Free generation: open-ended answers and explanations from the same chat prompt.

Scoring (:mod:`feddx.model.scoring`) ranks a fixed candidate list; generation lets the model
answer in its own words (an explanation, a question the candidate list does not cover, or the
diagnosis text that BLEU/ROUGE compare with the reference). A case is rendered by the one prompt
renderer (:func:`feddx.model.prompt.render_prompt`), so a generated answer follows exactly the
prompt the model was trained and scored on; a list of chat messages goes through the
tokenizer's own chat template.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from feddx.data.schema import Case
from feddx.model.prompt import (
    DEFAULT_MAX_PROMPT_TOKENS,
    SYSTEM_PROMPT,
    RenderedPrompt,
    render_prompt,
)

Message = Mapping[str, str]


def _message_ids(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    if not messages:
        raise ValueError("no messages to answer")
    for i, msg in enumerate(messages):
        if set(msg) != {"role", "content"} or msg["role"] not in ("system", "user", "assistant"):
            raise ValueError(
                f"message {i} must have exactly 'role' (system/user/assistant) and 'content'"
            )
    if getattr(tokenizer, "chat_template", None):
        text = str(
            tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
            )
        )
    else:  # base models without a template: the renderer's plain layout
        text = "\n\n".join(m["content"] for m in messages) + "\n\nAnswer: "
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids_for(
    tokenizer: Any,
    prompt: Case | RenderedPrompt | Sequence[Message] | str,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
) -> list[int]:
    """Token ids of what to answer: a case (rendered by :func:`render_prompt`), an already
    rendered prompt, chat messages, or a bare question (asked under the feddx system prompt)."""
    if isinstance(prompt, Case):
        return render_prompt(prompt, tokenizer, max_prompt_tokens).input_ids
    if isinstance(prompt, RenderedPrompt):
        return list(prompt.input_ids)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("the question is empty")
        prompt = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ]
    ids = _message_ids(tokenizer, prompt)
    if len(ids) > max_prompt_tokens:
        raise ValueError(
            f"the messages take {len(ids)} tokens, over max_prompt_tokens={max_prompt_tokens}"
        )
    return ids


def generate_answer(
    model: Any,
    tokenizer: Any,
    prompt: Case | RenderedPrompt | Sequence[Message] | str,
    *,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
) -> str:
    """Generate the model's answer to ``prompt`` and return it as plain text.

    Parameters
    ----------
    max_new_tokens
        Upper bound on generated tokens; generation also stops at the end-of-turn token.
    temperature
        0 (default) decodes greedily and is deterministic; > 0 samples with this temperature.
    top_p
        Nucleus sampling mass when sampling (1.0: no truncation).
    seed
        Seeds the sampler (with the global torch RNG restored afterwards) so a sampled answer
        is reproducible.

    Raises :class:`ValueError` for an empty question, malformed messages, a prompt over
    ``max_prompt_tokens`` or invalid sampling settings.
    """
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    ids = prompt_ids_for(tokenizer, prompt, max_prompt_tokens)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    sample = temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_p=top_p if sample else None,
        top_k=None,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    rng = (
        torch.random.fork_rng(devices=[] if device.type == "cpu" else [device])
        if seed is not None
        else contextlib.nullcontext()
    )
    with rng, torch.inference_mode():
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
        )
    new_tokens = out[0, len(ids) :].tolist()
    return str(tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()

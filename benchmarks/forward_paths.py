"""Which forward path a model takes, how exactly it reproduces the model, and what it saves.

For a base model (alias, GGUF, directory or hub id): the path :func:`feddx.model.decoder.
choose_runner` picks and why (logged), the split forward's largest relative logit difference
from the model's own forward on a whole prompt and at the answer positions of a padded batch,
then the same LoRA training run twice from the same adapter, once on the chosen path and once
forced onto the general one: wall time and the loss after every step (equal work).

    python -m benchmarks.forward_paths --model gemma3-270m --cases 16

Run it on an idle core (the two trainings are timed).
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
from typing import Any

import torch

from feddx.data.sources import load_cases
from feddx.model.adapter import LoraSpec, adapter_state, attach_lora, load_adapter_state
from feddx.model.decoder import DecoderRunner, choose_runner, split_difference
from feddx.model.loading import load_base_model
from feddx.train import forward
from feddx.train.batching import collate, encode_cases
from feddx.train.config import TrainConfig
from feddx.train.trainer import train_adapter

DATA = "csv:../shared/data/symptom2disease/symptom2disease_sample.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    loaded = load_base_model(args.model)
    cases = load_cases(args.data, max_cases=args.cases, seed=0).cases
    lora = LoraSpec(rank=8, alpha=16, top_layers=2)
    torch.manual_seed(0)
    model = attach_lora(loaded.model, lora)
    examples = encode_cases(cases, loaded.tokenizer, 320)
    chosen = choose_runner(model, examples[0].input_ids[:24], max(len(e) for e in examples))
    print(f"model {args.model}: {chosen.path} path; longest example {max(map(len, examples))}")
    if chosen.path == "split":
        _print_differences(model, examples, loaded.tokenizer.pad_token_id or 0)

    config = TrainConfig(
        epochs=args.epochs, batch_size=8, learning_rate=1e-3, max_prompt_tokens=320, lora=lora
    )
    initial = adapter_state(model)
    for path in (chosen.path, "general") if chosen.path == "split" else ("general",):
        if path == "general":  # force the general path for the comparison
            forward.choose_runner = lambda m, _p, _n: forward.BackboneRunner(m)  # type: ignore[assignment,misc]
        load_adapter_state(model, initial)
        start = time.perf_counter()
        result = train_adapter(model, loaded.tokenizer, cases, config)
        losses = " ".join(f"{x:.4f}" for x in result.loss_history)
        print(f"{path:8s} {time.perf_counter() - start:6.1f} s  losses {losses}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


def _print_differences(model: Any, examples: list[Any], pad_id: int) -> None:
    whole = split_difference(DecoderRunner(model), examples[0].input_ids)
    batch = collate(examples, range(min(4, len(examples))), pad_id)
    answers = forward.check_equivalence(forward.TrainingRunner(model), batch)
    print(f"split vs own forward: {whole:.1e} (whole prompt), {answers:.1e} (answer positions)")


if __name__ == "__main__":
    main()

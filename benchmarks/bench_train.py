"""Training throughput, peak memory and accuracy: feddx's trainer against Hugging Face's
``Trainer`` + peft LoRA, on the same DDXPlus cases, each in a process of its own, compared at
equal accuracy (time to accuracy) as well as at equal work (examples per second).

    .venv/bin/python benchmarks/bench_train.py [--train 64] [--validation 49] [--test 40]
        [--epochs 3] [--our-epochs N] [--top-layers 4] [--targets q_proj,v_proj,...]
        [--dropout 0] [--lr 1e-3] [--reference-lr LR] [--threads N]
        [--answer-loss vocabulary|candidates] [--skip-reference] [--skip-eval]
        [--method ours|reference]

The default (64 training cases) takes a few minutes on an idle 2-core machine and shows
speed and memory; its top-1 figures are noise (49 classes, 64 examples). The committed figures
(``results/bench-train.txt``) use ``--train 96 --test 98 --epochs 3 --our-epochs 6
--top-layers 8 --lr 0.005 --reference-lr 0.002`` (about 20 minutes on one core).

Equal accuracy. The reference trains ``--epochs`` epochs and is scored on ``--validation``
cases (the next cases of the training side of the split, never trained on) and on the test
cases. Ours trains at most ``--our-epochs`` epochs (one cosine schedule over all of them); its
adapter after each epoch is scored on the same validation cases, in order, and the first epoch
whose validation top-1 is at least the reference's minus one case is the one timed (training
wall seconds up to that epoch's end, caching included) and scored on the test cases. The
speed-up at equal accuracy is the reference's training seconds over ours to that epoch; the
test top-1 of both at those points says whether the accuracy held on unseen cases. Nothing is
chosen on the test cases. Ours' settings (top layers, learning rate) are fixed on the command
line before the run.

Each method runs in a fresh interpreter (the script calls itself with ``--method``), so
neither sees memory the other left resident, and the peak RSS reported is that process's own
peak from start to end (``getrusage``: loading, training and scoring), beside the peak sampled
during training alone. Both use the same LoRA dropout (``--dropout``, default 0). The methods:

* **ours**: :func:`feddx.train.trainer.train_adapter` with the given settings (by default
  rank-16 LoRA on every linear module of the top 4 of SmolLM2's 30 layers, no LoRA dropout,
  frozen-layer activations cached, last layer and LM head evaluated at answer tokens only,
  length-bucketed batches of 8);
* **reference**: ``transformers.Trainer`` + peft LoRA rank 16 on q,v of every layer (dropout
  ``--dropout``), the model's own loss (vocabulary logits for every position), batches of 8
  padded to their longest example, labels masked to the answer tokens (the same loss target as
  ours), the same learning rate, schedule shape (5% warm-up, cosine) and epochs.

Both train from the same base weights on the same training cases (a stratified split of
``../shared/data/ddxplus``, rendered by the one prompt renderer), and both are scored with
:meth:`feddx.model.predict.Diagnoser.diagnose` on the same held-out cases against all 49 DDXPlus
pathologies. Printed: wall seconds, examples/s and their ratio, peak RSS (the process's, and
sampled every 20 ms during training), top-1/top-3 of both, and, for our training loop, the
achieved FLOP/s as a fraction of this machine's float32 matmul peak measured in the same
process. FLOPs are counted analytically (see ``_our_flops``). Never asserts: figures only.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "ddxplus"
PROMPT_TOKENS = 320  # TrainConfig's default prompt budget, which ours trains with


@contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Sample this process's RSS every 20 ms; yields a dict that gets ``peak_gib`` and
    ``start_gib`` when the block ends."""
    import psutil

    proc = psutil.Process()
    out = {"start_gib": proc.memory_info().rss / 2**30, "peak_gib": 0.0}
    stop = threading.Event()
    peak = [proc.memory_info().rss]

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak_gib"] = max(peak[0], proc.memory_info().rss) / 2**30


def matmul_peak_gflops(seconds: float = 3.0) -> float:
    """Best float32 GEMM rate over a few shapes (the ceiling any training step can reach)."""
    import torch

    best = 0.0
    for m, k, n in ((2048, 576, 1536), (2048, 1536, 576), (1024, 1024, 1024), (2048, 2048, 2048)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        deadline = time.perf_counter() + seconds / 4
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            for _ in range(5):
                a @ b
            best = max(best, 5 * 2 * m * k * n / (time.perf_counter() - start) / 1e9)
    return best


def _layer_params(config: Any) -> tuple[float, float]:
    """(all weights of one decoder layer, its k/v projections only)."""
    h, i = config.hidden_size, config.intermediate_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    d = getattr(config, "head_dim", None) or h // heads
    kv_params = h * kv * d * 2
    return h * heads * d * 2 + kv_params + 3 * h * i, kv_params


def _our_flops(
    config: Any, result: Any, lora_params_per_layer: float, head_rows: int | None = None
) -> float:
    """FLOPs of our training loop (not counting the one-off activation cache).

    Per token slot (padding included) in each trainable layer: forward ``2P``, backward to the
    layer input ``2P`` (frozen weights need no weight gradient), LoRA weight gradients
    ``~6 P_lora``; attention ``2 L H`` forward and twice that backward per token (causal, so
    half of ``4 L H``). A pruned last layer does its k/v projections for every slot and the
    rest only at answer tokens. LM head: ``2 V H`` forward plus ``2 V H`` backward per answer
    token, where ``V`` is the vocabulary, or ``head_rows`` (an upper bound on the choices per
    position: the number of candidates) under the candidate-restricted loss.
    """
    n_top = result.stats["n_layers"] - result.stats["split_layer"]
    pruned = result.stats.get("pruned_last_layer", 0.0)
    slots, answers = result.stats["trainable_slots"], result.stats["answer_tokens"]
    p, p_kv = _layer_params(config)
    h = config.hidden_size
    mean_len = slots / max(1, result.examples)
    per_full_layer = (4 * p + 6 * lora_params_per_layer + 6 * mean_len * h) * slots
    last = (
        4 * p_kv * slots + (4 * (p - p_kv) + 6 * lora_params_per_layer + 6 * mean_len * h) * answers
    )
    head = 4 * (head_rows or config.vocab_size) * h * answers
    return float((n_top - pruned) * per_full_layer + pruned * last + head)


def _top_k(preds: Sequence[Any], k: int) -> float:
    hits = [p.case.require_label().diagnosis in [r.name for r in p.ranked[:k]] for p in preds]
    return sum(hits) / len(hits) if hits else float("nan")


def _evaluate(
    diagnoser: Any, adapter: str | None, cases: Sequence[Any], candidates: list[str]
) -> dict[str, float]:
    start = time.perf_counter()
    preds = diagnoser.diagnose(cases, candidates, adapter=adapter)
    return {
        "top1": _top_k(preds, 1),
        "top3": _top_k(preds, 3),
        "eval_seconds": time.perf_counter() - start,
    }


def _diagnoser(model: Any, tokenizer: Any) -> Any:
    from feddx.model.predict import Diagnoser

    model.eval()
    return Diagnoser(model, tokenizer, base_fingerprint="bench")  # holds its LoRA weights


def time_to_accuracy(
    diagnoser: Any,
    snapshots: Sequence[EpochSnapshot],
    validation: Sequence[Any],
    candidates: list[str],
    target: float,
) -> dict[str, float]:
    """Score our epoch snapshots on the validation cases in order and stop at the first whose
    top-1 is at least ``target`` minus one case (``target``: the reference's validation top-1).
    The epoch is chosen on validation only; the caller scores the chosen one on the test cases.
    Without a snapshot reaching it, the last epoch is chosen and ``reached`` is 0."""
    slack = 1.0 / len(validation) + 1e-9
    out: dict[str, float] = {"reached": 0.0}
    for snap in snapshots:
        diagnoser.add_state(f"epoch{snap.epoch}", snap.state, max_prompt_tokens=PROMPT_TOKENS)
        top1 = _evaluate(diagnoser, f"epoch{snap.epoch}", validation, candidates)["top1"]
        out[f"epoch{snap.epoch}_seconds"] = snap.seconds
        out[f"epoch{snap.epoch}_validation_top1"] = top1
        out.update(chosen_epoch=float(snap.epoch), seconds_to_target=snap.seconds)
        if top1 >= target - slack:
            out["reached"] = 1.0
            break
    return out


@dataclass(frozen=True)
class EpochSnapshot:
    """Our adapter after ``epoch`` epochs, and the training wall seconds it took to get there
    (caching included, the copying of snapshots excluded)."""

    epoch: int
    seconds: float
    state: dict[str, Any]


def run_ours(
    args: argparse.Namespace, train: list[Any], candidates: list[str]
) -> tuple[Any, Any, dict[str, float], list[EpochSnapshot]]:
    """Train ours for ``--our-epochs`` (default ``--epochs``), keeping the adapter at every
    epoch's end (what :func:`time_to_accuracy` scores)."""
    import torch

    from feddx.cli.progress import train_progress
    from feddx.model.adapter import LoraSpec, adapter_state, attach_lora, lora_parameters
    from feddx.model.loading import load_base_model
    from feddx.train.config import TrainConfig
    from feddx.train.trainer import train_adapter

    loaded = load_base_model(args.model)
    spec = LoraSpec(
        rank=args.rank,
        alpha=2 * args.rank,
        dropout=args.dropout,
        target_modules=tuple(args.targets.split(",")),
        top_layers=args.top_layers or None,
    )
    config = TrainConfig(
        lora=spec,
        learning_rate=args.lr,
        epochs=args.our_epochs or args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        activation_cache_dtype=args.cache_dtype,
        answer_loss=args.answer_loss,
    )
    torch.manual_seed(args.seed)
    model = attach_lora(loaded.model, spec)
    n_lora_layers = spec.top_layers or model.get_base_model().config.num_hidden_layers
    lora_per_layer = sum(p.numel() for p in lora_parameters(model).values()) / n_lora_layers
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    snapshots: list[EpochSnapshot] = []
    gc.collect()
    with peak_rss() as mem, train_progress(enabled=args.progress) as progress:
        start, cpu = time.perf_counter(), time.process_time()
        paused = [0.0]  # seconds spent copying snapshots, not training

        def snapshot(step: int, _loss: float) -> None:
            if step % steps_per_epoch == 0:
                t0 = time.perf_counter()
                elapsed = t0 - start - paused[0]
                snapshots.append(
                    EpochSnapshot(step // steps_per_epoch, elapsed, adapter_state(model))
                )
                paused[0] += time.perf_counter() - t0

        result = train_adapter(
            model,
            loaded.tokenizer,
            train,
            config,
            progress=progress,
            candidates=candidates,
            on_step=snapshot,
        )
        seconds = time.perf_counter() - start - paused[0]
        cpu = time.process_time() - cpu
    head_rows = len(candidates) if args.answer_loss == "candidates" else None
    flops = _our_flops(model.get_base_model().config, result, lora_per_layer, head_rows)
    figures = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "examples_per_second": result.examples / seconds,
        "peak_rss_gib": mem["peak_gib"],
        "start_rss_gib": mem["start_gib"],
        "loop_seconds": result.stats["loop_seconds"],
        "cache_seconds": result.stats.get("cache_seconds", 0.0),
        "padding_ratio": result.stats["padding_ratio"],
        "loop_gflops": flops / result.stats["loop_seconds"] / 1e9,
        "first_loss": result.loss_history[0],
        "last_loss": sum(result.loss_history[-3:]) / len(result.loss_history[-3:]),
    }
    return model, loaded.tokenizer, figures, snapshots


def run_reference(args: argparse.Namespace, train: list[Any]) -> tuple[Any, Any, dict[str, float]]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from feddx.model.loading import load_base_model
    from feddx.model.prompt import answer_ids, render_prompt

    loaded = load_base_model(args.model)
    tokenizer = loaded.tokenizer
    rows = []
    for case in train:
        prompt = render_prompt(case, tokenizer, 320).input_ids
        answer = answer_ids(tokenizer, case.require_label())
        ids = prompt + answer
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": [-100] * len(prompt) + answer,
            }
        )
    torch.manual_seed(args.seed)
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=args.dropout,  # the same as ours
        target_modules=["q_proj", "v_proj"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(loaded.model, lora)
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=args.epochs,
            learning_rate=args.reference_lr or args.lr,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            weight_decay=0.0,
            max_grad_norm=1.0,
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=args.seed,
            disable_tqdm=not args.progress,
            dataloader_pin_memory=False,
        )
        collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
        trainer = Trainer(model=model, args=targs, train_dataset=rows, data_collator=collator)
        gc.collect()
        with peak_rss() as mem:
            start, cpu = time.perf_counter(), time.process_time()
            out = trainer.train()
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    n = len(rows) * args.epochs
    figures = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "examples_per_second": n / seconds,
        "peak_rss_gib": mem["peak_gib"],
        "start_rss_gib": mem["start_gib"],
        "train_loss": float(out.training_loss),
    }
    return model, tokenizer, figures


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED, help="DDXPlus folder")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--train", type=int, default=64, help="training cases")
    ap.add_argument("--test", type=int, default=40, help="held-out cases scored for top-1")
    ap.add_argument("--epochs", type=int, default=3, help="the reference's epochs")
    ap.add_argument(
        "--our-epochs",
        type=int,
        default=0,
        help="ours: at most this many epochs (0: --epochs); the first epoch whose validation "
        "top-1 reaches the reference's (minus one case) is the one timed and tested",
    )
    ap.add_argument(
        "--validation", type=int, default=49, help="validation cases (the epoch is chosen on)"
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3, help="ours: peak learning rate")
    ap.add_argument(
        "--reference-lr", type=float, default=None, help="reference's learning rate (default: --lr)"
    )
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument(
        "--top-layers", type=int, default=4, help="ours: adapters on the last N layers (0: all)"
    )
    ap.add_argument(
        "--targets",
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        help="ours: LoRA target modules",
    )
    ap.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (both methods)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--cache-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument(
        "--validation-only",
        action="store_true",
        help="score on the validation cases only, never the test cases (choosing settings)",
    )
    ap.add_argument(
        "--answer-loss",
        default="vocabulary",
        choices=["vocabulary", "candidates"],
        help="ours: loss over the vocabulary, or over the 49 candidates (TrainConfig.answer_loss)",
    )
    ap.add_argument("--progress", action="store_true")
    ap.add_argument(
        "--method",
        choices=["ours", "reference"],
        default=None,
        help="run only this method, in this process, and write its figures to --result-file "
        "(what the benchmark does for each method in a fresh process of its own)",
    )
    ap.add_argument("--result-file", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--target-top1", type=float, default=None, help=argparse.SUPPRESS)
    return ap


def _cases(args: argparse.Namespace) -> tuple[list[Any], list[Any], list[Any], list[str]]:
    """Training, validation and test cases: the first ``--train`` and the next
    ``--validation`` of a stratified split's training side, the first ``--test`` of its
    held-out side."""
    from feddx.data.ddxplus import ddxplus_candidates
    from feddx.data.sources import load_source
    from feddx.data.split import stratified_split

    cases = list(load_source("ddxplus", args.data))
    train_all, test_all = stratified_split(cases, test_fraction=0.3, seed=args.seed)
    train = train_all[: args.train]
    validation = train_all[args.train : args.train + args.validation]
    return train, validation, test_all[: args.test], ddxplus_candidates(args.data)


def _process_peak_rss_gib() -> float:
    """This process's peak resident set size since it started (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One method, start to finish, in this (fresh) process: load, train, score (the
    reference on validation and test; ours each epoch on validation until it reaches
    ``--target-top1``, then the chosen epoch on test)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    train, validation, test, candidates = _cases(args)
    figures: dict[str, float] = {"threads": float(torch.get_num_threads())}
    if args.method == "ours":
        peak = matmul_peak_gflops()
        model, tokenizer, out, snapshots = run_ours(args, train, candidates)
        # The machine is shared: measure the peak again right after our loop, keep the better.
        figures["matmul_peak_gflops"] = max(peak, matmul_peak_gflops())
    else:
        model, tokenizer, out = run_reference(args, train)
    figures.update(out)
    if not args.skip_eval:
        diagnoser = _diagnoser(model, tokenizer)
        adapter = "current"
        if args.method == "ours":
            target = args.target_top1 if args.target_top1 is not None else 1.0
            figures.update(time_to_accuracy(diagnoser, snapshots, validation, candidates, target))
            adapter = f"epoch{int(figures['chosen_epoch'])}"
        else:
            val = _evaluate(diagnoser, adapter, validation, candidates)
            figures["validation_top1"] = val["top1"]
        if not args.validation_only:
            figures.update(_evaluate(diagnoser, adapter, test, candidates))
    figures["process_peak_rss_gib"] = _process_peak_rss_gib()
    return figures


def _run_in_own_process(method: str, argv: list[str]) -> dict[str, float]:
    """Run ``method`` in a fresh interpreter (nothing left resident by the other method) and
    read back its figures."""
    import json
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / f"{method}.json"
        cmd = [sys.executable, __file__, *argv, "--method", method, "--result-file", str(result)]
        done = subprocess.run(cmd, check=False)
        if done.returncode != 0 or not result.is_file():
            raise SystemExit(f"{method}: the benchmark process failed (exit {done.returncode})")
        figures: dict[str, float] = json.loads(result.read_text())
        return figures


def _print_accuracy(results: dict[str, dict[str, float]], n_val: int, n_test: int) -> None:
    """Time to accuracy (ours' epochs on validation against the reference's validation top-1),
    the speed-up at that accuracy, and both methods' test top-1 at the timed point."""
    ours, ref = results.get("ours"), results.get("reference")
    if ours is not None:
        for k in range(1, int(ours["chosen_epoch"]) + 1):
            print(
                f"     ours after epoch {k}: {ours[f'epoch{k}_seconds']:.1f} s of training, "
                f"validation top-1 {ours[f'epoch{k}_validation_top1']:.3f}"
            )
    if ref is not None:
        print(
            f"reference after its epochs: {ref['seconds']:.1f} s, "
            f"validation top-1 {ref['validation_top1']:.3f}"
        )
    if ours is not None and ref is not None:
        if ours["reached"]:
            print(
                f"time to the reference's validation top-1 (minus one of {n_val} cases): ours "
                f"{ours['seconds_to_target']:.1f} s (epoch {int(ours['chosen_epoch'])}), "
                f"reference {ref['seconds']:.1f} s: "
                f"speed-up at equal accuracy {ref['seconds'] / ours['seconds_to_target']:.2f}x"
            )
        else:
            print(
                "ours did NOT reach the reference's validation top-1 within "
                f"{int(ours['chosen_epoch'])} epochs: no speed-up at equal accuracy"
            )
    for name, r in results.items():
        print(
            f"{name:>9}: test top-1 {r['top1']:.3f}  top-3 {r['top3']:.3f}  "
            f"(scored {n_test} cases in {r['eval_seconds']:.0f} s)"
        )
    if ours is not None and ref is not None:
        ahead = round((ours["top1"] - ref["top1"]) * n_test)
        print(
            f"test top-1: ours {'at least' if ahead >= -1 else 'NOT within'} the reference's "
            f"minus one case ({abs(ahead)} cases {'ahead' if ahead >= 0 else 'behind'})"
        )


def main() -> int:
    args = _parser().parse_args()
    if not args.data.is_dir():
        print(f"DDXPlus data not found at {args.data}; pass --data", file=sys.stderr)
        return 2
    if args.method is not None:
        import json

        figures = measure(args)
        if args.result_file is not None:
            args.result_file.write_text(json.dumps(figures))
        else:
            print(json.dumps(figures))
        return 0

    import torch

    train, validation, test, candidates = _cases(args)
    threads = args.threads or torch.get_num_threads()
    print(
        f"# DDXPlus {len(train)} training cases x {args.epochs} epochs (ours: at most "
        f"{args.our_epochs or args.epochs}), {len(validation)} validation, {len(test)} held-out "
        f"test, {len(candidates)} candidates; torch {torch.__version__}, {threads} threads; "
        "each method in its own process, the reference first"
    )
    results: dict[str, dict[str, float]] = {}
    if not args.skip_reference:
        results["reference"] = _run_in_own_process("reference", sys.argv[1:])
    if not args.skip_ours:
        target = results.get("reference", {}).get("validation_top1")
        extra = [] if target is None else ["--target-top1", repr(target)]
        results["ours"] = _run_in_own_process("ours", [*sys.argv[1:], *extra])

    ours = results.get("ours")
    if ours is not None:
        peak = ours["matmul_peak_gflops"]
        print(f"float32 matmul peak (best of before/after our run): {peak:.1f} GFLOP/s")
        top = f"top {args.top_layers} layers" if args.top_layers else "all layers"
        print(
            f"\nours: LoRA r{args.rank} {args.targets} on {top}, dropout {args.dropout}, "
            f"cache {args.cache_dtype}, lr {args.lr}, {args.answer_loss} loss"
        )
        print(
            f"  {ours['seconds']:.1f} s ({ours['cache_seconds']:.1f} s caching, "
            f"{ours['loop_seconds']:.1f} s loop; {ours['cpu_seconds']:.0f} CPU s), "
            f"{ours['examples_per_second']:.2f} examples/s, padding {ours['padding_ratio']:.1%}, "
            f"loss {ours['first_loss']:.3f} -> {ours['last_loss']:.3f}"
        )
        print(
            f"  peak RSS of its process {ours['process_peak_rss_gib']:.2f} GiB "
            f"(during training {ours['peak_rss_gib']:.2f} GiB, from {ours['start_rss_gib']:.2f})"
        )
        print(
            f"  training loop: {ours['loop_gflops']:.1f} GFLOP/s = "
            f"{ours['loop_gflops'] / peak:.0%} of the measured matmul peak"
        )
    if "reference" in results:
        ref = results["reference"]
        print(
            "reference: HF Trainer + peft LoRA r16 q_proj,v_proj on all layers, padded batches, "
            f"dropout {args.dropout}, lr {args.reference_lr or args.lr}"
        )
        print(
            f"  {ref['seconds']:.1f} s ({ref['cpu_seconds']:.0f} CPU s), "
            f"{ref['examples_per_second']:.2f} examples/s, mean train loss {ref['train_loss']:.3f}"
        )
        print(
            f"  peak RSS of its process {ref['process_peak_rss_gib']:.2f} GiB "
            f"(during training {ref['peak_rss_gib']:.2f} GiB, from {ref['start_rss_gib']:.2f})"
        )
    if ours is not None and "reference" in results:
        ref = results["reference"]
        our_examples = len(train) * (args.our_epochs or args.epochs)
        ref_examples = len(train) * args.epochs
        print(
            f"speed-up at equal work (examples/s, ours / reference): "
            f"{ours['examples_per_second'] / ref['examples_per_second']:.2f}x wall, "
            f"{ref['cpu_seconds'] / ref_examples / (ours['cpu_seconds'] / our_examples):.2f}x "
            "CPU time per example"
        )
    if not args.skip_eval:
        _print_accuracy(results, len(validation), len(test))
    return 1 if any(math.isnan(r.get("top1", 0.0)) for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

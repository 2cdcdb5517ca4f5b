"""Scale of a simulated federation: server memory and seconds per round at 10, 30 and 100
virtual clients on Flower's simulation runtime, with the tiny random model.

    .venv/bin/python benchmarks/bench_scale.py [--clients 10,30,100] [--rounds 4]
        [--cases-per-client 4] [--client-cpus 2] [--out runs/bench-scale]

Each size is one real ``feddx federate``-style run (:func:`feddx.federated.simulation.
run_simulation`: SuperLink, SuperExec, the simulation process that hosts the ServerApp and
Ray's driver, Ray and its ClientApp workers), so what is measured is what a user's run costs,
not a mock. The model is a randomly initialised 2-layer Llama (hidden 32) with SmolLM2's
tokenizer, written to a folder once; the data are synthetic labeled cases (3 diagnoses),
``--cases-per-client`` training cases per client (IID partition) plus a 20% server validation
split. Every client trains every round (``fraction-train`` 1); the global adapter is evaluated
only after the last round, so the rounds before it time training and aggregation alone.

Resources: Ray counts the machine's CPUs with ``multiprocessing.cpu_count()``, which ignores
CPU affinity, so under ``taskset -c 1`` it still sees 2 CPUs. ``--client-cpus 2`` (the default)
gives each ClientApp actor both of them: one client trains at a time and nothing is
oversubscribed when the whole run is pinned to one core. ``--client-cpus 1`` on an unpinned
2-core machine runs two at a time.

Memory is sampled every 0.5 s over every process of the run (they inherit the run's
``FEDDX_SIMULATION_RUN`` marker) and grouped by role from the command line. Reported per role:
peak RSS; and the peak of the server side's total (SuperLink + SuperExec + the simulation
process), which is what grows with the number of clients in a deployment too (Ray's workers
are the simulated clients; in a deployment they are separate machines). The slope between sizes
(least squares over the sizes run) is the cost per client. Never asserts: figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LABELS = ("Pneumonia", "Asthma", "Migraine")
SYMPTOMS = {
    "Pneumonia": ("fever", "productive cough"),
    "Asthma": ("wheezing", "night cough"),
    "Migraine": ("throbbing headache", "photophobia"),
}
SERVER_ROLES = ("superlink", "superexec", "simulation")
GIB = 1024**3
MIB = 1024**2


def role_of(cmdline: Sequence[str]) -> str:
    """The role of one process of a simulation run, from its command line."""
    text = " ".join(cmdline)
    for marker, role in (
        ("flower-superlink", "superlink"),
        ("flower-superexec", "superexec"),
        ("flwr-simulation", "simulation"),
        ("bin/flwr ", "flwr-cli"),  # `flwr log --stream`: the user's side, not the server
        ("ClientAppActor", "ray-client-worker"),
        ("ray::", "ray-worker"),
        ("default_worker.py", "ray-worker"),
        ("raylet", "ray-runtime"),
        ("gcs_server", "ray-runtime"),
    ):
        if marker in text:
            return role
    return "ray-runtime" if "ray" in text else "other"


@dataclass
class MemorySampler:
    """Peak RSS per role of the processes carrying ``marker`` in ``FEDDX_SIMULATION_RUN``."""

    marker: str
    interval: float = 0.5
    peak_by_role: dict[str, int] = field(default_factory=dict)
    peak_server: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        import psutil

        by_role: dict[str, int] = {}
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get("FEDDX_SIMULATION_RUN") != self.marker:
                    continue
                role = role_of(proc.cmdline())
                by_role[role] = by_role.get(role, 0) + proc.memory_info().rss
            except (psutil.Error, OSError):
                continue
        for role, rss in by_role.items():
            self.peak_by_role[role] = max(self.peak_by_role.get(role, 0), rss)
        self.peak_server = max(self.peak_server, sum(by_role.get(r, 0) for r in SERVER_ROLES))
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    @contextmanager
    def running(self) -> Iterator[MemorySampler]:
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def make_cases(n: int, seed: int = 0) -> list[Any]:
    """``n`` synthetic labeled cases, the 3 diagnoses in turn."""
    from feddx.data.schema import Case, Finding, Label

    rng = random.Random(seed)
    cases = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        cases.append(
            Case(
                case_id=f"case-{i:05d}",
                age=float(rng.randint(20, 80)),
                sex=rng.choice(["female", "male"]),
                text=f"Patient reports {SYMPTOMS[label][0]}.",
                findings=(Finding(name=SYMPTOMS[label][1]),),
                label=Label(diagnosis=label),
            )
        )
    return cases


def write_tiny_model(directory: Path) -> Path:
    """A random 2-layer Llama (hidden 32) with SmolLM2's tokenizer, saved as a model folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from feddx.model.loading import resolve_model

    if (directory / "config.json").exists():
        return directory
    gguf = Path(resolve_model("smollm2-135m-instruct").location)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def federation(
    n: int, rounds: int, model: Path, data: Path, out: Path, cases_per_client: int
) -> Any:
    """The run config of one size: every client trains every round, eval after the last."""
    from feddx.federated.config import FederatedConfig

    return FederatedConfig(
        model=str(model),
        data=f"jsonl:{data}",
        validation_fraction=0.2,
        max_eval_cases=8,
        num_clients=n,
        partition="iid",
        num_rounds=rounds,
        eval_every=rounds,
        eval_initial=False,
        min_train_clients=n,
        min_available_clients=n,
        local_epochs=1,
        batch_size=cases_per_client,
        learning_rate=5e-3,
        max_prompt_tokens=64,
        lora_rank=4,
        lora_alpha=8.0,
        lora_top_layers=1,
        out_dir=str(out),
        activation_cache_dir=str(out.parent / "activations"),
    )


def run_size(args: argparse.Namespace, n: int, model: Path, root: Path) -> dict[str, Any]:
    """One simulation of ``n`` clients; its timing, bytes and memory peaks."""
    from feddx.data.jsonl import write_jsonl
    from feddx.federated.simulation import run_simulation

    data = root / f"cases-{n}.jsonl"
    # 20% goes to the server's validation split; the rest is cases_per_client per client.
    write_jsonl(make_cases(int(n * args.cases_per_client / 0.8) + 1), data)
    out = (root / f"clients-{n}").resolve()
    cfg = federation(n, args.rounds, model, data, out, args.cases_per_client)
    sampler = MemorySampler(str(out))
    with sampler.running():
        outcome = run_simulation(cfg, client_cpus=args.client_cpus, timeout=args.timeout)
    rounds = [r for r in outcome.history["rounds"] if r["round"] > 0]
    return {
        "clients": n,
        "wall_seconds": outcome.seconds,
        "round_seconds": [r["seconds"] for r in rounds],
        "accepted": [r.get("accepted") for r in rounds],
        "bytes_received": [r.get("bytes_received") for r in rounds],
        "bytes_sent": [r.get("bytes_sent") for r in rounds],
        "peak_rss_by_role": sampler.peak_by_role,
        "peak_server_rss": sampler.peak_server,
        "samples": sampler.samples,
        "leftover_pids": outcome.leftover_pids,
    }


def slope(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ys on xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return b, my - b * mx


def steady_round_seconds(row: dict[str, Any]) -> float:
    """Mean seconds of the rounds after the first (actor start-up) and before the last (eval);
    the first round's when there are no such rounds."""
    secs = row["round_seconds"]
    middle = secs[1:-1] or secs[1:] or secs
    return float(sum(middle) / len(middle))


def report(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of every size and the per-client slopes."""
    lines = [
        "| clients | s/round (steady) | round seconds (each) | server peak RSS, MiB "
        "(SuperLink / SuperExec / simulation+ServerApp = total) | Ray workers peak RSS, MiB "
        "| KiB received/round |",
        "|---:|---:|---|---|---:|---:|",
    ]
    for r in rows:
        p = r["peak_rss_by_role"]
        parts = " / ".join(f"{p.get(k, 0) / MIB:.0f}" for k in SERVER_ROLES)
        ray = (p.get("ray-client-worker", 0) + p.get("ray-worker", 0)) / MIB
        kib = (r["bytes_received"][-1] or 0) / 1024
        each = ", ".join(f"{s:.1f}" for s in r["round_seconds"])
        lines.append(
            f"| {r['clients']} | {steady_round_seconds(r):.2f} | {each} | {parts} = "
            f"{r['peak_server_rss'] / MIB:.0f} | {ray:.0f} | {kib:.1f} |"
        )
    if len(rows) >= 2:
        xs = [float(r["clients"]) for r in rows]
        ms, m0 = slope(xs, [r["peak_server_rss"] / MIB for r in rows])
        ts, t0 = slope(xs, [steady_round_seconds(r) for r in rows])
        lines += [
            "",
            f"server peak RSS ~ {m0:.0f} MiB + {ms * 1024:.0f} KiB per client (least squares)",
            f"seconds per round ~ {t0:.2f} + {ts:.3f} per client (least squares)",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,30,100")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cases-per-client", type=int, default=4)
    parser.add_argument("--client-cpus", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-scale")
    args = parser.parse_args(argv)
    for key, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("FLWR_TELEMETRY_ENABLED", "0"),
        ("FLWR_DISABLE_UPDATE_CHECK", "1"),
        ("RAY_USAGE_STATS_ENABLED", "0"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(key, value)
    args.out.mkdir(parents=True, exist_ok=True)
    model = write_tiny_model(args.out / "tiny-model")
    affinity = sorted(os.sched_getaffinity(0))
    print(
        f"# {len(args.clients.split(','))} sizes, {args.rounds} rounds, "
        f"{args.cases_per_client} cases per client, client-resources-num-cpus="
        f"{args.client_cpus}, CPU affinity {affinity}, os.cpu_count() {os.cpu_count()}",
        flush=True,
    )
    rows = []
    for n in (int(x) for x in args.clients.split(",")):
        started = time.monotonic()
        row = run_size(args, n, model, args.out)
        rows.append(row)
        print(json.dumps(row), flush=True)
        print(f"# {n} clients done in {time.monotonic() - started:.0f} s", flush=True)
    print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

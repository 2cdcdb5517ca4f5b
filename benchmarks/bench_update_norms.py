"""Honest clients' update norms, to choose the default ``max-update-norm``.

    .venv/bin/python benchmarks/bench_update_norms.py [--only tiny,tiny-local-dp,demo,wide]
        [--rounds 2] [--max-eval-cases 8] [--work runs/bench-update-norms]

Runs real federations (the ServerApp loop and the ClientApp handlers, in one process through
:class:`~feddx.federated.inprocess.InProcessGrid`) with no absolute norm limit and no outlier
filter, and prints the L2 norm of every client update of every round (update = local adapter
minus the round's global adapter, over all LoRA tensors: what the guard measures):

* ``tiny``: the federated tests' setting (tiny random Llama, 24 synthetic cases, 2 IID clients,
  rank 4 on the top layer, lr 0.005);
* ``tiny-local-dp``: the same with DP-SGD on each client (noise 1.0, clipping 0.5);
* ``demo``: ``feddx demo``'s federation (SmolLM2, UCI Heart, one client per hospital, rank 8
  q/v on the top 2 layers, lr 0.001, 1 local epoch);
* ``wide``: the settings of ``results/federated.md`` on UCI Heart's hospitals (rank 16 on all 7
  linear modules of the top 2 layers, lr 0.005, 2 local epochs, batch 4): the largest updates
  any shipped configuration makes.

Figures only; never asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _tiny_model_dir(work: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from transformers import AutoTokenizer

    from feddx.model.loading import resolve_model
    from tiny_llama import make_tiny_llama

    d = work / "tiny-llama"
    if not (d / "config.json").is_file():
        path = Path(resolve_model("smollm2-135m-instruct").location)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        make_tiny_llama(len(tok)).save_pretrained(d)
        tok.save_pretrained(d)
    return d


def _tiny_data(work: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests" / "federated"))
    from fed_helpers import make_cases

    from feddx.data.jsonl import write_jsonl

    path = work / "tiny-cases.jsonl"
    write_jsonl(make_cases(24), path)
    return path


def configs(names: list[str], work: Path, rounds: int, max_eval: int) -> dict[str, Any]:
    from feddx.federated.config import FederatedConfig
    from feddx.federated.demo import demo_config

    out: dict[str, Any] = {}
    off = {"max_update_norm": 0.0, "outlier_factor": 0.0, "resume": False}
    if any(n.startswith("tiny") for n in names):
        tiny = FederatedConfig(
            model=str(_tiny_model_dir(work)),
            data=f"jsonl:{_tiny_data(work)}",
            validation_fraction=0.25,
            num_clients=2,
            partition="iid",
            num_rounds=rounds,
            max_eval_cases=4,
            local_epochs=1,
            batch_size=4,
            learning_rate=5e-3,
            max_prompt_tokens=64,
            lora_rank=4,
            lora_alpha=8.0,
            lora_top_layers=1,
            out_dir=str(work / "tiny"),
            activation_cache_dir=str(work / "acts-tiny"),
            **off,
        )
        out["tiny"] = tiny
        out["tiny-local-dp"] = tiny.replace(
            dp="local",
            dp_noise_multiplier=1.0,
            dp_clipping_norm=0.5,
            out_dir=str(work / "tiny-local-dp"),
        )
    demo = demo_config(
        model="smollm2-135m-instruct",
        seed=0,
        test_fraction=0.2,
        out_dir=work / "demo",
        rounds=rounds,
        max_eval_cases=max_eval,
    ).replace(activation_cache_dir=str(work / "acts-smollm2"), **off)
    out["demo"] = demo
    out["wide"] = demo.replace(
        lora_rank=16,
        lora_alpha=32.0,
        lora_targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        learning_rate=5e-3,
        local_epochs=2,
        batch_size=4,
        max_prompt_tokens=256,
        out_dir=str(work / "wide"),
    )
    return {n: out[n] for n in names}


def run(cfg: Any) -> list[dict[str, Any]]:
    from feddx.federated.client_app import app as client_app
    from feddx.federated.inprocess import InProcessGrid
    from feddx.federated.server_app import run_server

    nodes = [{"partition-id": i, "num-partitions": cfg.num_clients} for i in range(cfg.num_clients)]
    result = run_server(InProcessGrid(client_app, cfg.to_run_config(), nodes), cfg)
    return [h for h in result.history if h["round"] > 0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="tiny,tiny-local-dp,demo,wide")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-eval-cases", type=int, default=8)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench-update-norms")
    args = ap.parse_args()
    import torch

    args.work.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    print(f"# honest update norms; torch {torch.__version__}, {torch.get_num_threads()} threads")
    summary = {}
    for name, cfg in configs(names, args.work, args.rounds, args.max_eval_cases).items():
        t0 = time.perf_counter()
        rounds = run(cfg)
        norms = [n for r in rounds for n in r.get("update_norms", [])]
        summary[name] = max(norms)
        print(
            f"{name}: {cfg.model.rsplit('/', 1)[-1]}, {cfg.num_clients} clients, rank "
            f"{cfg.lora_rank} {cfg.lora_targets} top {cfg.lora_top_layers}, lr "
            f"{cfg.learning_rate}, {cfg.local_epochs} local epoch(s), dp {cfg.dp}; "
            f"{time.perf_counter() - t0:.0f} s"
        )
        for r in rounds:
            shown = ", ".join(f"{n:.4f}" for n in r.get("update_norms", []))
            print(f"  round {r['round']}: {r.get('accepted')} accepted, norms [{shown}]")
        print(f"  largest: {max(norms):.4f}")
    print(json.dumps({k: round(v, 4) for k, v in summary.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

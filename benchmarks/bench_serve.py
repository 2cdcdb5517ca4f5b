"""Serving throughput and latency: ``feddx serve`` on loopback, the naive server (one request at
a time, one forward per case) against the batched forward, the shared-prefix KV cache, the
int8 CPU path and bfloat16 on the CPU, at 1 and 8 concurrent clients, with each path's top-1 on
a fixed labelled set.

    .venv/bin/python benchmarks/bench_serve.py                       # tiny random Llama (fast)
    .venv/bin/python benchmarks/bench_serve.py --model smollm2-135m-instruct \
        --out results/bench-serve.txt                                # the README's figures

What it does, all in a temporary folder:

1. builds an adapter registry with one chain per UCI hospital (global > the hospital's region >
   the hospital; random LoRA adapters of the layout feddx trains on CPU: rank 8 on q/v of the
   top 2 layers), and one API key per hospital;
2. **top-1** (in process, the service's own code path: ``Diagnoser.diagnose``): the base model
   zero-shot on ``--accuracy-cases`` Symptom2Disease development cases (the training side of
   the usual split, ``--seed 0 --test-fraction 0.2``: never the test split), scored by each
   path: naive (one case per forward), batched (``--accuracy-batch`` cases per forward),
   batched with the prefix cache, and that in int8 and in bfloat16. The loss against naive is paired
   (bootstrap interval and McNemar from ``feddx.evaluate.stats``); skipped when the data is
   absent;
3. **server**: starts one ``feddx serve`` process per path on 127.0.0.1 (a free port): naive
   (``--scheduler serial``, no prefix cache), batched (micro-batched groups scored in one padded
   forward), batched + prefix cache, and that + int8 and + bfloat16; each is driven by a
   bounded asyncio client (httpx) with ``--requests`` UCI cases per level, mixed hospitals;
   p50/p95/p99 latency and throughput per level, the paths alternated level by level so a
   change in the machine's load hits all alike; ratios against naive measured in the same run.
   Each server is stopped by its process id when its run ends.

Figures only, never assertions. Timings on a shared machine are noisy: compare paths measured
in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FEDDX = Path(sys.executable).with_name("feddx")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ world
def prepare_model(name: str, root: Path) -> str:
    """``tiny``: a random tiny Llama saved as a model directory (SmolLM2's tokenizer)."""
    if name != "tiny":
        return name
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from feddx.model.loading import resolve_model

    gguf = Path(resolve_model("smollm2-135m-instruct").location)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    import torch

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    out = root / "tiny-llama"
    LlamaForCausalLM(config).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def build_registry(loaded: Any, root: Path) -> dict[str, tuple[str, str]]:
    """One chain per UCI hospital; returns hospital -> (registry institution, region)."""
    import torch

    from feddx.data.uci_heart import HOSPITALS
    from feddx.model.adapter import LoraSpec, attach_lora, save_adapter
    from feddx.personalize.registry import AdapterRegistry, normalize_scope

    net = attach_lora(loaded.model, LoraSpec(rank=8, alpha=16, dropout=0.0, top_layers=2))
    reg = AdapterRegistry(root / "registry")

    def adapter(seed: int) -> Path:
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.02)
        out = root / "sources" / str(seed)
        save_adapter(
            net,
            out,
            base_fingerprint=loaded.fingerprint,
            max_prompt_tokens=320,
            metadata={"data": "uci-heart"},
        )
        return out

    glob = reg.register(adapter(1), level="global").adapter_id
    regions: dict[str, str] = {}
    hospitals = {}
    for i, (hospital, (institution, region)) in enumerate(sorted(HOSPITALS.items())):
        slug = normalize_scope(institution.replace("/", "-"))
        if region not in regions:
            regions[region] = reg.register(
                adapter(10 + i), level="regional", region=region, parent_id=glob
            ).adapter_id
        reg.register(
            adapter(20 + i), level="institutional", institution=slug, parent_id=regions[region]
        )
        hospitals[hospital] = (slug, normalize_scope(region))
    net.unload()  # the model back without LoRA for the other measurements
    return hospitals


def uci_cases(n: int) -> list[tuple[str, Any]]:
    """``n`` UCI cases as (hospital, case), hospitals interleaved."""
    from feddx.data.uci_heart import HOSPITALS, load_uci_heart

    by_inst = {inst: h for h, (inst, _) in HOSPITALS.items()}
    pools: dict[str, list[Any]] = {}
    for case in load_uci_heart(None):
        pools.setdefault(by_inst[case.institution], []).append(case)
    names = sorted(pools)
    return [
        (names[i % len(names)], pools[names[i % len(names)]][i // len(names)]) for i in range(n)
    ]


# ------------------------------------------------------------------ top-1 per path
PATHS = ("naive", "batched", "batched+prefix", "batched+prefix+int8", "batched+prefix+bf16")
SERVER_ENV = {  # how each path's server is configured (FEDDX_SERVE_* settings)
    "naive": {"FEDDX_SERVE_SCHEDULER": "serial", "FEDDX_SERVE_PREFIX_CACHE": "false"},
    "batched": {"FEDDX_SERVE_PREFIX_CACHE": "false"},
    "batched+prefix": {"FEDDX_SERVE_PREFIX_CACHE": "true"},
    "batched+prefix+int8": {"FEDDX_SERVE_PREFIX_CACHE": "true", "FEDDX_SERVE_INT8": "true"},
    # bfloat16 weights on the CPU (the serve setting dtype): fast where the CPU has bf16 units
    "batched+prefix+bf16": {"FEDDX_SERVE_PREFIX_CACHE": "true", "FEDDX_SERVE_DTYPE": "bfloat16"},
}


def accuracy_cases(n: int) -> tuple[list[Any], Any] | None:
    """``n`` Symptom2Disease development cases (stratified, deterministic) and the candidate
    list; ``None`` when the shared data is absent."""
    from feddx.data.candidates import candidate_list
    from feddx.data.sources import load_cases
    from feddx.data.split import stratified_split

    path = REPO.parent / "shared" / "data" / "symptom2disease" / "symptom2disease_sample.csv"
    if not path.is_file():
        return None
    cases = load_cases(f"csv:{path}").cases
    dev, _test = stratified_split(cases, 0.2, seed=0)
    dev = sorted(dev, key=lambda c: c.case_id)
    if n and n < len(dev):
        dev, _ = stratified_split(dev, 1 - n / len(dev), seed=0)  # a stratified subset of n
        dev = sorted(dev, key=lambda c: c.case_id)
    return dev, candidate_list("csv", path, dev)


def accuracy(
    model: str, n: int, batch: int, adapter: Path | None, paths: tuple[str, ...] = PATHS
) -> dict[str, Any] | None:
    """Top-1 and ms per case of each of ``paths`` (naive first) on the same labelled cases (in
    process), with ``adapter`` (a Symptom2Disease adapter of ``model``) or the base model
    zero-shot."""
    from feddx.evaluate.stats import compare_correct
    from feddx.model.predict import Diagnoser

    loaded = accuracy_cases(n)
    if loaded is None:
        return None
    cases, cands = loaded
    from feddx.model.hardware import Hardware

    def load(dtype: str) -> tuple[Any, str | None]:
        d = Diagnoser.load(model, hardware=Hardware("cpu", dtype))
        held = d.add_adapter(adapter, name="s2d").name if adapter is not None else None
        d.diagnose(cases[:2], cands.names, adapter=held)  # warm-up
        return d, held

    d, held = load("float32")
    settings = {
        "naive": (False, 1),
        "batched": (False, batch),
        "batched+prefix": (True, batch),
        "batched+prefix+int8": (True, batch),
        "batched+prefix+bf16": (True, batch),
    }
    out: dict[str, Any] = {
        "cases": len(cases),
        "candidates": len(cands.names),
        "batch": batch,
        "adapter": str(adapter) if adapter else None,
        "command": command_line(),
        "cpus": sorted(os.sched_getaffinity(0)),
    }
    correct: dict[str, list[bool]] = {}
    for path in paths:
        if path.endswith("bf16"):
            del d
            d, held = load("bfloat16")
        d.prefix_cache, size = settings[path]
        if path.endswith("int8"):
            d.quantize_int8()
        start = time.perf_counter()
        preds = d.diagnose(cases, cands.names, adapter=held, batch_size=size)
        ms = (time.perf_counter() - start) * 1000 / len(cases)
        correct[path] = [p.top == p.gold for p in preds]
        out[path] = {"top1": statistics.mean(correct[path]), "ms_per_case": ms}
        if path != "naive":
            cmp = compare_correct(correct[path], correct["naive"])
            out[path]["vs_naive"] = {
                "points": 100 * cmp.interval.difference,
                "low": 100 * cmp.interval.low,
                "high": 100 * cmp.interval.high,
                "only_this": cmp.mcnemar.a_only,
                "only_naive": cmp.mcnemar.b_only,
                "p": cmp.mcnemar.p_value,
            }
        print(f"  {path:20s} top-1 {out[path]['top1']:.4f}  {ms:7.1f} ms/case", flush=True)
    return out


# ------------------------------------------------------------------ the server
def start_server(
    model: str, root: Path, path: str, log: Path, extra_env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cpus = extra_env.pop("BENCH_SERVER_CPUS", None)
    scheduler = SERVER_ENV[path].get("FEDDX_SERVE_SCHEDULER", "batched")
    env = {
        **os.environ,
        **extra_env,
        **SERVER_ENV[path],
        "HF_HUB_OFFLINE": "1",
        "FEDDX_SERVE_AUDIT_LOG": str(root / f"audit-{path}.jsonl"),
        "FEDDX_SERVE_RATE_PER_MINUTE": "1000000",
        "FEDDX_SERVE_RATE_BURST": "100000",
    }
    proc = subprocess.Popen(
        [
            *(["taskset", "-c", cpus] if cpus else []),
            str(FEDDX),
            "serve",
            "--model",
            model,
            "--registry",
            str(root / "registry"),
            "--keys",
            str(root / "keys.json"),
            "--candidates",
            "uci-heart",
            "--scheduler",
            scheduler,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the session this script started, by its id
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_ready(proc: subprocess.Popen[bytes], base: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"feddx serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("feddx serve did not become ready")


async def load(
    base: str, keys: dict[str, str], cases: list[tuple[str, Any]], clients: int, timeout_s: float
) -> dict[str, Any]:
    """``len(cases)`` requests, at most ``clients`` in flight; latencies of the 200s."""
    import httpx

    bodies = [(h, {"case": json.loads(c.model_dump_json())}) for h, c in cases]
    sem = asyncio.Semaphore(clients)
    latencies: list[float] = []
    ratios: list[float] = []
    batch_sizes: list[int] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=timeout_s, limits=limits) as client:

        async def one(hospital: str, body: dict[str, Any]) -> None:
            nonlocal errors
            async with sem:
                start = time.perf_counter()
                r = await client.post(
                    "/v1/diagnose", json=body, headers={"Authorization": f"Bearer {keys[hospital]}"}
                )
                if r.status_code == 200:
                    ms = (time.perf_counter() - start) * 1000
                    timing = r.json()["timing"]
                    latencies.append(ms)
                    ratios.append(ms / max(timing["scoring_ms"], 1e-3))
                    batch_sizes.append(timing["batch_cases"])
                else:
                    errors += 1
                    if errors == 1:
                        print(f"    first error: HTTP {r.status_code} {r.text[:300]}", flush=True)

        start = time.perf_counter()
        await asyncio.gather(*(one(h, b) for h, b in bodies))
        wall = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": len(cases),
        "errors": errors,
        "p50_ms": percentile(latencies, 0.5),
        "p95_ms": percentile(latencies, 0.95),
        "p99_ms": percentile(latencies, 0.99),
        "throughput_rps": len(latencies) / wall,
        "mean_batch_cases": statistics.mean(batch_sizes) if batch_sizes else 0.0,
        # client-observed latency over the server's own scoring time for that very case:
        # measured at the same moment, so robust to a machine whose load drifts
        "latency_over_scoring_p50": percentile(ratios, 0.5),
    }


def run_paths(
    model: str,
    root: Path,
    keys: dict[str, str],
    cases: list[tuple[str, Any]],
    levels: list[int],
    requests: int,
    env: dict[str, str],
    paths: tuple[str, ...] = PATHS,
) -> list[dict[str, Any]]:
    """Every path's server up at once, the paths measured alternately level by level (so a
    change in the machine's load hits all alike)."""
    servers = {p: start_server(model, root, p, root / f"serve-{p}.log", dict(env)) for p in paths}
    try:
        for proc, base in servers.values():
            wait_ready(proc, base)
            asyncio.run(load(base, keys, uci_cases(4), 1, 300))  # each hospital's adapter once
        out = []
        for c in levels:
            n = max(requests, 2 * c)
            for path, (_, base) in servers.items():
                res = asyncio.run(load(base, keys, cases[:n], c, 900))
                res["path"] = path
                out.append(res)
                print(
                    f"  {path:20s} clients={c:3d} p50={res['p50_ms']:8.1f} "
                    f"p95={res['p95_ms']:8.1f} ms  {res['throughput_rps']:6.2f} req/s  "
                    f"batch={res['mean_batch_cases']:.1f} errors={res['errors']}",
                    flush=True,
                )
        return out
    finally:
        for proc, _ in servers.values():
            stop_server(proc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", default="tiny", help="'tiny' (random tiny Llama) or a feddx model id"
    )
    ap.add_argument(
        "--requests", type=int, default=32, help="requests per path and level (>= 2 per client)"
    )
    ap.add_argument("--levels", default="1,8", help="concurrent clients")
    ap.add_argument(
        "--accuracy-cases", type=int, default=48, help="labelled cases for top-1 (0: all 692)"
    )
    ap.add_argument("--accuracy-batch", type=int, default=8, help="cases per batched forward")
    ap.add_argument(
        "--accuracy-adapter",
        type=Path,
        help="a Symptom2Disease adapter of --model for the top-1 part (default: the base model "
        "zero-shot, near chance on these 24 diseases)",
    )
    ap.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"comma-separated paths to measure, naive always among them (of {', '.join(PATHS)})",
    )
    ap.add_argument(
        "--accuracy-out", type=Path, help="also write the top-1 part as JSON here (to reuse)"
    )
    ap.add_argument(
        "--accuracy-from",
        type=Path,
        help="take the top-1 part from this JSON (another run's --accuracy-out) instead of "
        "measuring it: top-1 does not depend on the machine's load, so it may run separately "
        "(read after the servers' part; waited for up to 30 min if not there yet)",
    )
    ap.add_argument("--server-cpus", help="taskset CPU list for the servers (e.g. 1)")
    ap.add_argument(
        "--server-threads", type=int, help="torch threads in the servers (OMP_NUM_THREADS)"
    )
    ap.add_argument("--out", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]  # none: top-1 only
    paths = ("naive", *(p for p in PATHS[1:] if p in args.paths.split(",")))
    unknown = set(args.paths.split(",")) - set(PATHS)
    if unknown:
        ap.error(f"--paths: unknown path(s) {', '.join(sorted(unknown))}; choose from {PATHS}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from feddx.model.loading import load_base_model
    from feddx.serve.security import KeyStore

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        model = prepare_model(args.model, root)
        loaded = load_base_model(model)
        hospitals = build_registry(loaded, root)
        del loaded
        store = KeyStore(root / "keys.json")
        keys = {h: store.add_key(slug, region)[0] for h, (slug, region) in hospitals.items()}
        cases = uci_cases(max(args.requests, 2 * max(levels, default=1)))
        print("top-1 per path ...", flush=True)
        acc: dict[str, Any] | None = None
        if not args.accuracy_from:
            acc = accuracy(
                model, args.accuracy_cases, args.accuracy_batch, args.accuracy_adapter, paths
            )
            if acc is not None and args.accuracy_out:
                from feddx.io import atomic_write_text

                atomic_write_text(args.accuracy_out, json.dumps(acc, indent=1) + "\n")
        env = {"BENCH_SERVER_CPUS": args.server_cpus} if args.server_cpus else {}
        if args.server_threads:
            env["OMP_NUM_THREADS"] = str(args.server_threads)
        print("servers (one per path, measured alternately) ...", flush=True)
        results = (
            run_paths(model, root, keys, cases, levels, args.requests, env, paths) if levels else []
        )
    if args.accuracy_from:  # read last: the top-1 run may still be finishing elsewhere
        acc = json.loads(wait_for(args.accuracy_from, 1800).read_text())
    report = render(results, levels, acc, time.perf_counter() - started, args.accuracy_from)
    print(report)
    if args.out:
        from feddx.io import atomic_write_text

        atomic_write_text(args.out, report)
    return 0


def wait_for(path: Path, seconds: float) -> Path:
    """``path`` once it exists (another process writes it atomically), waiting up to
    ``seconds``."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear within {seconds:.0f} s")
        time.sleep(5)
    return path


def command_line() -> str:
    """This run's command as one would retype it: thread count, CPU pinning and arguments."""
    cpus = sorted(os.sched_getaffinity(0))
    pin = f"taskset -c {','.join(map(str, cpus))} " if len(cpus) < (os.cpu_count() or 1) else ""
    threads = os.environ.get("OMP_NUM_THREADS")
    env = f"OMP_NUM_THREADS={threads} " if threads else ""
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    return f"{env}{pin}.venv/bin/python benchmarks/bench_serve.py {args}"


def render(
    results: list[dict[str, Any]],
    levels: list[int],
    acc: dict[str, Any] | None,
    seconds: float,
    acc_from: Path | None = None,
) -> str:
    by = {(r["path"], r["clients"]): r for r in results}
    lines = [
        f"# command: {command_line()}",
        f"# machine: {platform.machine()} {os.cpu_count()} CPUs; "
        f"CPUs this process may use: {sorted(os.sched_getaffinity(0))}; took {seconds / 60:.1f} min",
        "feddx serve on loopback: naive (one request at a time, one forward per case) against "
        "the batched forward, the shared-prefix KV cache, int8 and bfloat16",
        "",
        f"{'path':20s} {'clients':>7s} {'requests':>8s} {'p50 ms':>9s} {'p95 ms':>9s} "
        f"{'p99 ms':>9s} {'req/s':>7s} {'batch':>6s} {'errors':>6s}",
    ]
    for r in results:
        lines.append(
            f"{r['path']:20s} {r['clients']:7d} {r['requests']:8d} {r['p50_ms']:9.1f} "
            f"{r['p95_ms']:9.1f} {r['p99_ms']:9.1f} {r['throughput_rps']:7.2f} "
            f"{r['mean_batch_cases']:6.1f} {r['errors']:6d}"
        )
    lines.append("")
    for c in levels:
        naive = by.get(("naive", c))
        for path in PATHS[1:]:
            r = by.get((path, c))
            if naive and r:
                lines.append(
                    f"{c} client{'s' if c > 1 else ''}, {path}: throughput "
                    f"{r['throughput_rps'] / naive['throughput_rps']:.2f}x naive's, "
                    f"p50 {r['p50_ms'] / naive['p50_ms']:.2f}x"
                )
    lines.append("")
    if acc is None:
        lines.append("top-1: skipped (../shared/data/symptom2disease absent)")
        return "\n".join(lines) + "\n"
    who = f"adapter {acc['adapter']}" if acc["adapter"] else "base model zero-shot"
    lines.append(
        f"top-1, {who}, {acc['cases']} Symptom2Disease development cases "
        f"(never the test split), {acc['candidates']} candidates, batched paths "
        f"{acc['batch']} cases per forward (in process):"
    )
    if acc_from is not None:
        lines.append(
            f"  (from {acc_from}, measured by: {acc.get('command', '?')}; "
            f"CPUs {acc.get('cpus', '?')})"
        )
    for path in PATHS:
        if path not in acc:
            continue
        a = acc[path]
        line = f"  {path:20s} top-1 {a['top1']:.4f}  {a['ms_per_case']:7.1f} ms/case"
        if "vs_naive" in a:
            v = a["vs_naive"]
            line += (
                f"  vs naive {v['points']:+.2f} points (95% CI {v['low']:+.2f} to "
                f"{v['high']:+.2f}; right only here {v['only_this']}, only naive "
                f"{v['only_naive']}, McNemar p {v['p']:.3g}); "
                f"{acc['naive']['ms_per_case'] / a['ms_per_case']:.2f}x naive's speed"
            )
        lines.append(line)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

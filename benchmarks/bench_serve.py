"""Serving latency and throughput: ``feddx serve`` on loopback, micro-batched against the naive
baseline, at 1, 8 and 32 concurrent clients from the four UCI hospitals.

    .venv/bin/python benchmarks/bench_serve.py                       # tiny random Llama (fast)
    .venv/bin/python benchmarks/bench_serve.py --model smollm2-135m-instruct \
        --out results/bench-serve.txt                                # the README's figures

What it does, all in a temporary folder:

1. builds an adapter registry with one chain per UCI hospital (global > the hospital's region >
   the hospital; random LoRA adapters of the layout feddx trains on CPU: rank 8 on q/v of the
   top 2 layers), and one API key per hospital;
2. **scorer**: the Diagnoser's own time for one case (``Diagnoser.diagnose([case])`` with the
   hospital's adapter held), per UCI case used below, in this process before any server runs;
3. **forward efficiency**: the model's prompt forward for 8 real prompts one at a time against
   one padded batch of 8, and a full prompt against its suffix over a cached shared prefix
   (the chat template and system prompt every prompt starts with), to show what batching and
   shared-prefix caching can each gain on this CPU;
4. **server**: starts ``feddx serve`` as its own process on 127.0.0.1 (a free port), once with
   ``--scheduler batched`` and once with ``--scheduler serial`` (one request at a time: the
   naive baseline), and drives each with a bounded asyncio client (httpx): ``--requests`` per
   level (at least 2 per client), mixed hospitals, UCI cases in order; p50/p95/p99 latency and
   throughput per level. Each server is stopped by its process id when its run ends.

Figures only, never assertions. Timings on a shared 2-core machine are noisy: the script runs
each level once after a warm-up; compare modes measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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


# ------------------------------------------------------------------ in-process measurements
def scorer_times(
    model: str, root: Path, cases: list[tuple[str, Any]], hospitals: dict[str, tuple[str, str]]
) -> list[float]:
    """The Diagnoser's own time (ms) for each case, scored alone with its hospital's adapter."""
    from feddx.data.candidates import candidate_list
    from feddx.model.predict import Diagnoser
    from feddx.personalize.registry import AdapterRegistry

    d = Diagnoser.load(model)
    reg = AdapterRegistry(root / "registry")
    cands = candidate_list("uci-heart", None, [])
    for hospital, (slug, region) in hospitals.items():
        chain = reg.resolve(institution=slug, region=region, base_fingerprint=d.base_fingerprint)
        assert chain.answering is not None
        d.add_adapter(chain.answering.path, name=hospital)
    d.diagnose([cases[0][1]], cands.names, adapter=cases[0][0], icd10=cands.icd10)  # warm-up
    out = []
    for hospital, case in cases:
        start = time.perf_counter()
        d.diagnose([case], cands.names, adapter=hospital, icd10=cands.icd10)
        out.append((time.perf_counter() - start) * 1000)
    return out


def forward_efficiency(
    model: str, cases: list[tuple[str, Any]], batch: int = 8, repeats: int = 3
) -> dict[str, Any]:
    """Prompt forwards: one at a time vs one padded batch; full prompt vs suffix over a cached
    shared prefix."""
    import copy

    import torch

    from feddx.model.loading import load_base_model
    from feddx.model.prompt import render_prompt

    loaded = load_base_model(model)
    net, tok = loaded.model, loaded.tokenizer
    prompts = [render_prompt(c, tok, 320).input_ids for _, c in cases[:batch]]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def best(fn: Any) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times) * 1000

    def one_by_one() -> None:
        for p in prompts:
            net(input_ids=torch.tensor([p]), logits_to_keep=1, use_cache=False)

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def batched() -> None:
        net(input_ids=ids, attention_mask=mask, logits_to_keep=1, use_cache=False)

    prefix_len = 0
    while all(len(p) > prefix_len + 1 and p[prefix_len] == prompts[0][prefix_len] for p in prompts):
        prefix_len += 1
    with torch.inference_mode():
        t_single = best(one_by_one)
        t_batch = best(batched)
        prefix_out = net(input_ids=torch.tensor([prompts[0][:prefix_len]]), use_cache=True)
        cache = getattr(prefix_out, "cache", None) or prefix_out.past_key_values

        def suffixes() -> None:
            for p in prompts:
                kv = copy.deepcopy(cache)
                net(
                    input_ids=torch.tensor([p[prefix_len:]]),
                    cache=kv,
                    logits_to_keep=1,
                    use_cache=True,
                )

        t_suffix = best(suffixes)
    lengths = [len(p) for p in prompts]
    return {
        "prompts": len(prompts),
        "prompt_tokens_mean": statistics.mean(lengths),
        "padded_width": width,
        "one_at_a_time_ms": t_single,
        "batched_ms": t_batch,
        "batch_speedup": t_single / t_batch,
        "shared_prefix_tokens": prefix_len,
        "suffix_over_cached_prefix_ms": t_suffix,
        "prefix_cache_speedup": t_single / t_suffix,
    }


# ------------------------------------------------------------------ the server
def start_server(
    model: str, root: Path, scheduler: str, log: Path, extra_env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cpus = extra_env.pop("BENCH_SERVER_CPUS", None)
    env = {
        **os.environ,
        **extra_env,
        "HF_HUB_OFFLINE": "1",
        "FEDDX_SERVE_AUDIT_LOG": str(root / f"audit-{scheduler}.jsonl"),
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


def run_modes(
    model: str,
    root: Path,
    keys: dict[str, str],
    cases: list[tuple[str, Any]],
    levels: list[int],
    requests: int,
    env: dict[str, str],
) -> list[dict[str, Any]]:
    """Both servers up at once, the modes measured alternately level by level (so a change in
    the machine's load hits both alike)."""
    servers = {
        m: start_server(model, root, m, root / f"serve-{m}.log", dict(env))
        for m in ("batched", "serial")
    }
    try:
        for proc, base in servers.values():
            wait_ready(proc, base)
            asyncio.run(load(base, keys, uci_cases(4), 1, 300))  # each hospital's adapter once
        out = []
        for c in levels:
            n = max(requests, 2 * c)
            for mode, (_, base) in servers.items():
                res = asyncio.run(load(base, keys, cases[:n], c, 900))
                res["scheduler"] = mode
                out.append(res)
                print(
                    f"  {mode:8s} clients={c:3d} p50={res['p50_ms']:8.1f} p95={res['p95_ms']:8.1f} "
                    f"p99={res['p99_ms']:8.1f} ms  {res['throughput_rps']:6.2f} req/s  "
                    f"batch={res['mean_batch_cases']:.1f}",
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
        "--requests", type=int, default=32, help="requests per concurrency level (>= 2 per client)"
    )
    ap.add_argument("--levels", default="1,8,32", help="concurrent clients")
    ap.add_argument("--scorer-cases", type=int, default=16, help="cases timed on the scorer alone")
    ap.add_argument("--server-cpus", help="taskset CPU list for the servers (e.g. 1)")
    ap.add_argument(
        "--server-threads", type=int, help="torch threads in the servers (OMP_NUM_THREADS)"
    )
    ap.add_argument("--out", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from feddx.model.loading import load_base_model
    from feddx.serve.security import KeyStore

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        model = prepare_model(args.model, root)
        loaded = load_base_model(model)
        hospitals = build_registry(loaded, root)
        del loaded
        store = KeyStore(root / "keys.json")
        keys = {h: store.add_key(slug, region)[0] for h, (slug, region) in hospitals.items()}
        n_cases = max(args.requests, 2 * max(levels))
        cases = uci_cases(n_cases)
        print("scorer alone ...", flush=True)
        scorer = scorer_times(model, root, cases[: args.scorer_cases], hospitals)
        print(f"  median {statistics.median(scorer):.1f} ms per case", flush=True)
        print("forward efficiency ...", flush=True)
        fwd = forward_efficiency(model, cases)
        print(f"  {json.dumps(fwd)}", flush=True)
        env = {"BENCH_SERVER_CPUS": args.server_cpus} if args.server_cpus else {}
        if args.server_threads:
            env["OMP_NUM_THREADS"] = str(args.server_threads)
        print("servers (batched and serial, measured alternately) ...", flush=True)
        results = run_modes(model, root, keys, cases, levels, args.requests, env)
    report = render(args, scorer, fwd, results, levels)
    print(report)
    if args.out:
        from feddx.io import atomic_write_text

        atomic_write_text(args.out, report)
    return 0


def render(
    args: Any,
    scorer: list[float],
    fwd: dict[str, Any],
    results: list[dict[str, Any]],
    levels: list[int],
) -> str:
    by = {(r["scheduler"], r["clients"]): r for r in results}
    lines = [
        "feddx serve on loopback: micro-batched vs naive (one request at a time)",
        "command: .venv/bin/python benchmarks/bench_serve.py "
        + " ".join(a for a in sys.argv[1:] if a),
        f"machine: {platform.machine()} {os.cpu_count()} CPUs (shared with other jobs); one run per "
        "level, the two modes alternated level by level",
        "",
        f"scorer alone (Diagnoser.diagnose, one case, adapter held): median {statistics.median(scorer):.1f} ms, "
        f"min {min(scorer):.1f}, max {max(scorer):.1f} over {len(scorer)} UCI cases",
        "",
        f"{'scheduler':9s} {'clients':>7s} {'requests':>8s} {'p50 ms':>9s} {'p95 ms':>9s} {'p99 ms':>9s} {'req/s':>7s} {'batch':>6s} {'errors':>6s}",
    ]
    for r in results:
        lines.append(
            f"{r['scheduler']:9s} {r['clients']:7d} {r['requests']:8d} {r['p50_ms']:9.1f} {r['p95_ms']:9.1f} "
            f"{r['p99_ms']:9.1f} {r['throughput_rps']:7.2f} {r['mean_batch_cases']:6.1f} {r['errors']:6d}"
        )
    one = by.get(("batched", 1))
    if one:
        lines += [
            "",
            f"1 client, batched: p50 {one['p50_ms']:.1f} ms = "
            f"{one['p50_ms'] / statistics.median(scorer):.2f}x the scorer-alone median; per request, "
            "latency over the server's own scoring time for that case: median "
            f"{one['latency_over_scoring_p50']:.2f}x",
        ]
    for c in levels:
        b, s = by.get(("batched", c)), by.get(("serial", c))
        if b and s:
            lines.append(
                f"{c} clients: batched throughput {b['throughput_rps'] / s['throughput_rps']:.2f}x the naive baseline's, p50 {b['p50_ms'] / s['p50_ms']:.2f}x"
            )
    lines += [
        "",
        f"forward efficiency ({fwd['prompts']} UCI prompts, {fwd['prompt_tokens_mean']:.0f} tokens on average, padded to {fwd['padded_width']}):",
        f"  one at a time {fwd['one_at_a_time_ms']:.1f} ms, one padded batch {fwd['batched_ms']:.1f} ms: batching gains {fwd['batch_speedup']:.2f}x",
        f"  shared prefix {fwd['shared_prefix_tokens']} tokens; suffixes over the cached prefix {fwd['suffix_over_cached_prefix_ms']:.1f} ms: "
        f"prefix caching would gain {fwd['prefix_cache_speedup']:.2f}x on the prompt pass",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

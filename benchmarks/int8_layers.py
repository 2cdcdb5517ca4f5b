"""Which linear layers can run in int8 (``Diagnoser.quantize_int8``) without changing answers:
top-1 and agreement with float32 on Symptom2Disease development cases (never the test split),
batched with the prefix cache, as the service scores.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_layers.py N ADAPTER LAYERS
    # e.g. 80 runs/gvs/s2d-smollm2-135m-instruct/adapter gate_proj,up_proj

``LAYERS``: the comma-separated layer names put in int8 (feddx.model.predict.INT8_LAYERS);
``all`` for every linear layer but the LM head. Figures only.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import feddx.model.predict as predict
    from benchmarks.bench_serve import accuracy_cases
    from feddx.model.predict import Diagnoser

    n, adapter, layers = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    loaded = accuracy_cases(n)
    if loaded is None:
        raise SystemExit("../shared/data/symptom2disease is absent")
    cases, cands = loaded
    if layers == "all":
        layers = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    predict.INT8_LAYERS = tuple(layers.split(","))
    d = Diagnoser.load("smollm2-135m-instruct")
    d.add_adapter(adapter, name="a")
    d.prefix_cache = True
    ref = d.diagnose(cases, cands.names, adapter="a", batch_size=8)
    d.quantize_int8()
    start = time.perf_counter()
    q = d.diagnose(cases, cands.names, adapter="a", batch_size=8)
    ms = (time.perf_counter() - start) * 1000 / len(cases)
    top1 = [statistics.mean(p.top == p.gold for p in ps) for ps in (ref, q)]
    agree = statistics.mean(a.top == b.top for a, b in zip(ref, q, strict=True))
    print(
        f"int8 {layers}: {len(cases)} cases, top-1 float32 {top1[0]:.3f} int8 {top1[1]:.3f}, "
        f"same answer {agree:.1%}, {ms:.0f} ms/case"
    )


if __name__ == "__main__":
    main()

"""Helpers shared by the federated tests: a small labeled dataset with a canary string, and
hand-built train replies around a tiny LoRA-shaped adapter."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from feddx.data.schema import Case, Finding, Label
from feddx.federated.inprocess import _set_task_identity

# Appears in every case's text, findings and ids: it must never show up in a message, a
# metric, a log line or a file the server writes.
CANARY = "ZEBRACANARY7731"
LABELS = ("Pneumonia", "Asthma", "Migraine")
SYMPTOMS = {
    "Pneumonia": ("fever", "productive cough"),
    "Asthma": ("wheezing", "night cough"),
    "Migraine": ("throbbing headache", "photophobia"),
}


def make_cases(n: int = 36, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        cases.append(
            Case(
                case_id=f"case-{i:03d}-{CANARY}",
                patient_id=f"patient-{CANARY}-{i}",
                age=float(rng.randint(20, 80)),
                sex=rng.choice(["female", "male"]),
                text=f"Patient {CANARY} reports {SYMPTOMS[label][0]}.",
                findings=(Finding(name=SYMPTOMS[label][1]), Finding(name=f"note {CANARY}")),
                institution=f"Hospital {'AB'[i % 2]}",
                label=Label(diagnosis=label),
            )
        )
    return cases


def node_configs(n: int) -> list[dict[str, Any]]:
    """Simulation node configs for ``n`` clients."""
    return [{"partition-id": i, "num-partitions": n} for i in range(n)]


KEYS = ("layers.0.q_proj.lora_A.weight", "layers.0.q_proj.lora_B.weight")


def global_adapter() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        KEYS[0]: rng.standard_normal((4, 16)).astype(np.float32),
        KEYS[1]: np.zeros((16, 4), np.float32),
    }


def reply(
    node: int,
    arrays: ArrayRecord,
    *,
    n: int = 10,
    codec: ConfigRecord | None = None,
    metrics: dict | None = None,
) -> Message:
    _set_task_identity()
    content = RecordDict(
        {"arrays": arrays, "metrics": MetricRecord(metrics or {"num-examples": n})}
    )
    if codec is not None:
        content["codec"] = codec
    instruction = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    instruction.metadata.__dict__["_message_id"] = f"m{node}"
    return Message(content, reply_to=instruction)


def update(seed: int, scale: float = 0.01) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: v + scale * rng.standard_normal(v.shape).astype(np.float32)
        for k, v in global_adapter().items()
    }

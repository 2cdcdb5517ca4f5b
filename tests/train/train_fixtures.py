"""Builders for the trainer tests: a tiny random Llama and synthetic labelled cases whose
findings determine the diagnosis (so a few steps of training visibly lower the loss)."""

from __future__ import annotations

import random
from typing import Any

from feddx.data.schema import Case, Finding, Label
from tiny_llama import make_tiny_llama as _make_tiny_llama

DIAGNOSES = {
    "Pneumonia": ("fever", "productive cough", "crackles"),
    "Asthma": ("wheezing", "night cough", "allergies"),
    "Migraine": ("headache", "photophobia", "nausea"),
    "Acute myocardial infarction": ("chest pain", "sweating", "pain radiates to left arm"),
}


def make_cases(n: int, *, offset: int = 0, seed: int = 0) -> list[Case]:
    """``n`` cases cycling through :data:`DIAGNOSES`, with varied lengths."""
    rng = random.Random(seed + offset)
    names = list(DIAGNOSES)
    out = []
    for i in range(n):
        dx = names[i % len(names)]
        findings = [Finding(name=f) for f in DIAGNOSES[dx]]
        findings += [Finding(name="fatigue", negated=True)] * rng.randint(0, 3)
        out.append(
            Case(
                case_id=f"case-{offset + i}",
                age=rng.randint(18, 90),
                sex=rng.choice(["female", "male"]),
                findings=tuple(findings),
                label=Label(diagnosis=dx),
            )
        )
    return out


def make_tiny_llama(vocab_size: int, layers: int = 3, seed: int = 0) -> Any:
    """The shared tiny Llama with 3 layers and a larger initialisation than Llama's 0.02, so
    the tied LM head can express confident predictions with 32 dimensions: the loss then
    visibly falls within a few steps."""
    return _make_tiny_llama(vocab_size, layers, seed, initializer_range=0.2)

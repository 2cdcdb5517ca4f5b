"""Small synthetic cases for the evaluation tests (shared by tests/evaluate and the CLI tests): three diagnoses that the findings separate
perfectly, spread over two hospitals, both sexes and several age bands."""

from __future__ import annotations

from feddx.data.schema import Case, DifferentialEntry, Finding, Label

LABELS = {"Angina": "I20", "GERD": "K21", "Pneumonia": "J18"}
_FINDINGS = {
    "Angina": (Finding(name="chest pain", value="pressure"), Finding(name="exertional")),
    "GERD": (Finding(name="chest pain", value="burning"), Finding(name="exertional", negated=True)),
    "Pneumonia": (Finding(name="fever", value=39.2, unit="C"), Finding(name="cough")),
}
_DIFF = {
    "Angina": (("Angina", 0.6), ("GERD", 0.3), ("Pneumonia", 0.1)),
    "GERD": (("GERD", 0.7), ("Angina", 0.3)),
    "Pneumonia": (("Pneumonia", 0.9), ("GERD", 0.005)),
}


def make_cases(n: int, offset: int = 0, differential: bool = True) -> list[Case]:
    names = list(LABELS)
    out = []
    for i in range(offset, offset + n):
        dx = names[i % 3]
        out.append(
            Case(
                case_id=f"case-{i}",
                age=float(15 + (i * 7) % 70),
                sex="female" if i % 2 else "male",
                findings=_FINDINGS[dx],
                institution="Hospital A" if i % 4 < 2 else "Hospital B",
                region="North" if i % 4 < 2 else "South",
                label=Label(
                    diagnosis=dx,
                    icd10=LABELS[dx],
                    differential=tuple(
                        DifferentialEntry(name=a, probability=p, icd10=LABELS[a])
                        for a, p in _DIFF[dx]
                    )
                    if differential
                    else (),
                ),
            )
        )
    return out

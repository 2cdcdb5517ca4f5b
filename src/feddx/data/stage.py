"""The de-identification stage: what every path that writes, sends or logs cases goes through.

``feddx data prepare``, ``feddx data partition``, the loopback deployment's data preparation
and ``feddx evaluate --predictions`` all call :class:`DeidStage`; none of them writes a case,
a case id or a manifest of case ids that did not pass through it. The stage wraps
:class:`~feddx.data.deid.Deidentifier` (text redaction, keyed pseudonyms for case and patient
ids, per-patient date shifts, ages over 89 capped) and records on each output what was done:
a :class:`DeidMarker` with the key's public fingerprint (:meth:`Deidentifier.key_id`), never
the key.

Running the stage twice with the same key changes nothing the second time (pseudonyms are
recognised, dates are not shifted again, redacted text stays as it is), so de-identified data
can be partitioned, deployed and evaluated without ids drifting from one file to the next.

Opting out is explicit: ``assume_deidentified=True`` (``--assume-deidentified`` on the
commands) passes cases through untouched, records ``"deidentified": "assumed"`` in the output
and logs a warning. When de-identification cannot run (Presidio, spaCy or the NER model is
missing, the cache is not writable), constructing the stage raises a one-line
:class:`~feddx.errors.ConfigError`: a command refuses rather than write raw text.

Flower messages need no stage: a ClientApp replies with adapter tensors and counts only (see
``feddx.federated.client_app``; tested in ``tests/test_phi_leak.py``), and checkpoints hold
adapters, round numbers and metrics.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from feddx.data.schema import Case
from feddx.errors import ConfigError, DataError
from feddx.io import atomic_write_json, file_sha256

if TYPE_CHECKING:
    from feddx.data.deid import DeidConfig, Deidentifier

log = logging.getLogger(__name__)

MARKER_FORMAT = "feddx-deid/1"
MARKER_SUFFIX = ".deid.json"
ASSUMED: Literal["assumed"] = "assumed"
ASSUME_WARNING = (
    "de-identification skipped (--assume-deidentified): the cases are written as they were "
    "read; use this only for data that is already de-identified"
)


@dataclass(frozen=True)
class DeidMarker:
    """What an output records about how its cases were de-identified.

    ``deidentified`` is ``True`` (the stage ran) or ``"assumed"`` (the caller opted out);
    ``key_id`` is the key's public fingerprint (``None`` when assumed), ``key`` says whether
    the key was configured (``FEDDX_DEID_KEY``: pseudonyms link across runs) or drawn for this
    run; ``ner`` names the NER model used, if any.
    """

    deidentified: bool | Literal["assumed"]
    key_id: str | None = None
    key: Literal["configured", "random"] | None = None
    ner: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "deidentified": self.deidentified,
            "key_id": self.key_id,
            "key": self.key,
            "ner": self.ner,
        }


class DeidStage:
    """De-identify cases on their way to a file, a message or a log.

    Parameters
    ----------
    deidentifier
        A :class:`~feddx.data.deid.Deidentifier` to use (pass one to reuse its loaded
        pipelines); by default one is built from ``config`` when the first case arrives, so a
        stage that only pseudonymizes ids (:meth:`case_id`) never loads Presidio or spaCy.
    config
        The :class:`~feddx.data.deid.DeidConfig` of that de-identifier (default settings).
    assume_deidentified
        Pass cases through untouched (the caller vouches that they are de-identified); the
        marker says ``"assumed"`` and a warning is logged.

    Raises
    ------
    ConfigError
        De-identification cannot run here (Presidio, spaCy or the configured NER model is not
        installed), no key is configured while ``require_key`` is set, or the configuration is
        invalid.
    """

    def __init__(
        self,
        deidentifier: Deidentifier | None = None,
        *,
        config: DeidConfig | None = None,
        assume_deidentified: bool = False,
    ) -> None:
        from feddx.data.deid import DeidConfig, Pseudonymizer

        self.assumed = assume_deidentified
        self.n_cases = 0
        # Texts of the output holding a placeholder, whoever put it there: this stage, or a
        # loader that redacts while it reads (the FHIR loader replaces the patient's names
        # before a case reaches the stage, so "texts this stage changed" would say 0).
        self.n_text_redacted = 0
        self.placeholders: Counter[str] = Counter()
        self._deid = deidentifier
        self.config = deidentifier.config if deidentifier is not None else config or DeidConfig()
        if assume_deidentified:
            log.warning("%s", ASSUME_WARNING)
            self.pseudonymizer: Pseudonymizer | None = None
            return
        if deidentifier is None:
            _check_installed(self.config)
        self.pseudonymizer = (
            deidentifier.pseudonymizer
            if deidentifier is not None
            else Pseudonymizer(
                self.config.key,
                require_key=self.config.require_key,
                max_date_shift_days=self.config.max_date_shift_days,
            )
        )

    @property
    def deidentifier(self) -> Deidentifier | None:
        """The de-identifier (built now if needed), or ``None`` when de-identification is
        assumed."""
        if self.assumed:
            return None
        if self._deid is None:
            from feddx.data.deid import Deidentifier

            self._deid = Deidentifier(self.config)
            # One key for the ids this stage pseudonymized before and the cases it now
            # de-identifies (a random key is drawn once per stage).
            assert self.pseudonymizer is not None
            self._deid.pseudonymizer = self.pseudonymizer
        return self._deid

    def case(self, case: Case) -> Case:
        """``case`` de-identified (or as it is, when assumed).

        A case whose id is already a pseudonym of this key came out of this stage (or of
        ``feddx data prepare`` with the same key) and passes through as it is: the stage is
        idempotent and costs nothing on data it already de-identified.
        """
        self.n_cases += 1
        if self.pseudonymizer is None or (
            self.config.pseudonymize_ids and self.pseudonymizer.is_pseudonym(case.case_id, "case")
        ):
            return case
        deid = self.deidentifier
        assert deid is not None
        clean = deid.deidentify_case(case)
        found = _placeholders_in(clean.text)
        self.placeholders.update(found)
        self.n_text_redacted += bool(found) or clean.text != case.text
        return clean

    def cases(self, cases: Iterable[Case]) -> Iterator[Case]:
        """Each case of ``cases`` through :meth:`case`, lazily (a stream stays a stream)."""
        for case in cases:
            yield self.case(case)

    def case_id(self, case_id: str) -> str:
        """The id under which a case may appear in an output: its keyed pseudonym (unchanged
        when it already is one of this key), or the id itself when assumed."""
        if self.pseudonymizer is None or not self.config.pseudonymize_ids:
            return case_id
        return self.pseudonymizer.pseudonym(case_id, "case")

    def marker(self, *, text: bool = True) -> DeidMarker:
        """What to record on the output (never the key itself). ``text=False`` for an output
        that holds ids but no case text (a predictions file): no NER model is named."""
        if self.pseudonymizer is None:
            return DeidMarker(deidentified=ASSUMED)
        ner = self.config.ner_model if self.config.ner_labels and text else None
        if ner is not None:
            from feddx.data.deid import ner_model_info

            info = ner_model_info(ner)
            ner = f"{info['name']} {info['version']}"
        return DeidMarker(
            deidentified=True,
            key_id=self.pseudonymizer.key_id(),
            key="random" if self.pseudonymizer.key_is_random else "configured",
            ner=ner,
        )


def _placeholders_in(text: str | None) -> Counter[str]:
    """How often each de-identification placeholder (``[NAME]``, ``[DATE]`` ...) occurs in
    ``text``."""
    if not text or "[" not in text:
        return Counter()
    from feddx.data.deid import PLACEHOLDERS

    global _PLACEHOLDER_RE
    if _PLACEHOLDER_RE is None:
        _PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in set(PLACEHOLDERS.values())))
    return Counter(m.group(0) for m in _PLACEHOLDER_RE.finditer(text))


_PLACEHOLDER_RE: re.Pattern[str] | None = None


def _check_installed(config: DeidConfig) -> None:
    """Refuse early, in one line, when the packages de-identification needs are missing."""
    import importlib.util

    needed = ["presidio_analyzer", "spacy"]
    if config.ner_model is not None and config.ner_labels:
        needed.append(config.ner_model)
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"de-identification cannot run ({', '.join(missing)} not installed); refusing to "
            "write raw cases: install feddx's pinned dependencies (pip install -e .), or pass "
            "--assume-deidentified for data that is already de-identified"
        )


def deidentify_cases(cases: Iterable[Case], stage: DeidStage) -> list[Case]:
    """Every case of ``cases`` through ``stage``, as a list."""
    return list(stage.cases(cases))


def marker_path(data_file: Path) -> Path:
    """Where the marker of a JSONL file lives: ``cases.jsonl`` -> ``cases.jsonl.deid.json``."""
    data_file = Path(data_file)
    return data_file.with_name(data_file.name + MARKER_SUFFIX)


def write_marker(
    data_file: Path, marker: DeidMarker, *, extra: Mapping[str, Any] | None = None
) -> Path:
    """Record ``marker`` beside ``data_file`` (written just before), with the file's SHA-256 so
    the record cannot be mistaken for another file's; returns the marker's path."""
    path = marker_path(data_file)
    payload = {
        "format": MARKER_FORMAT,
        "file": Path(data_file).name,
        "sha256": file_sha256(data_file),
        **marker.as_dict(),
        **dict(extra or {}),
    }
    atomic_write_json(path, payload, ensure_ascii=False)
    return path


def read_marker(data_file: Path) -> dict[str, Any] | None:
    """The marker recorded beside ``data_file``, or ``None`` if there is none or it describes
    other bytes than the file holds now. Raises :class:`DataError` for an unreadable marker."""
    path = marker_path(data_file)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable de-identification marker ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != MARKER_FORMAT:
        raise DataError(f"{path}: not a {MARKER_FORMAT} marker")
    if payload.get("sha256") != file_sha256(data_file):
        return None
    return payload

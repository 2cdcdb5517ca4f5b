"""De-identification benchmark: per-entity recall and precision, and throughput.

    .venv/bin/python benchmarks/bench_deid.py [--n 300] [--seed 0] [--fhir-limit N]

Sets: synthetic Portuguese records (always), hand-written Portuguese/English records
(``tests/fixtures/deid/handwritten.txt``, written before measuring and not used to tune the
recognizers: the least optimistic figures here) and the Synthea FHIR notes of
``../shared/data/fhir/synthea_bulk_10_patients`` (when present). Each set runs twice: without
``extra_identifiers`` (what the text alone gives) and with the identifiers a registry knows
(the patient's name, CPF, CNS, phone, e-mail and address line; for FHIR the Patient
resource's names, identifiers, phone and address lines).

Matching rules (span level):

- recall, per gold entity: a gold span counts as found when every non-space character of it
  lies inside predicted spans of any type (it is fully redacted; the placeholder's type does
  not change what leaks). ``typed`` also requires the covering spans to have the gold type.
- precision, per predicted entity: a predicted span is correct when it overlaps a gold span.
  ``char_prec`` is the share of redacted characters that are gold PHI (over-redaction).

Baseline, in the same run: Presidio's stock recognizers (all predefined ones, English, the
same blank spaCy pipeline, no additions), on the text alone: recall per entity and throughput
are printed beside ours, so the table shows what feddx adds and what it costs.

Before and after the statistical NER model: every set also runs with ``ner_model=None``
(patterns, cues and caller identifiers only, what feddx had before ``en_core_web_sm`` joined
the recognizers), and one line per set compares names recall and precision without caller
identifiers. ``--ner-labels PERSON GPE LOC`` measures places from the model too.

Throughput is characters per second of ``find`` over the whole set, one thread, after
construction; the set-up time (import + first construction, and a second construction) is
printed, and the NER model's ``meta.json`` (name, version, spaCy requirement, sources, labels).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deid_labeled_set import (
    LabeledDoc,
    fhir_labeled_notes,
    parse_marked_records,
    synthetic_brazilian_records,
)

if TYPE_CHECKING:
    from feddx.data.deid import PHISpan

REPO = Path(__file__).resolve().parents[1]
HANDWRITTEN = REPO / "tests" / "fixtures" / "deid" / "handwritten.txt"
FHIR_DIR = (
    Path(os.environ.get("FEDDX_SHARED_DATA", REPO.parent / "shared" / "data"))
    / "fhir"
    / "synthea_bulk_10_patients"
)


class Finder(Protocol):
    def find(self, text: str, extra_identifiers: Sequence[str] = ()) -> list[PHISpan]: ...


class StockPresidio:
    """Presidio's predefined recognizers as shipped (e-mail domain check kept offline)."""

    def __init__(self) -> None:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.predefined_recognizers import EmailRecognizer

        from feddx.data.deid import _nlp_engine, blank_spacy_dir, offline_tld_extractor

        class OfflineEmail(EmailRecognizer):  # type: ignore[misc]
            def validate_result(self, pattern_text: str) -> bool:
                return bool(offline_tld_extractor()(pattern_text).fqdn != "")

        registry = RecognizerRegistry(supported_languages=["en"])
        registry.load_predefined_recognizers(languages=["en"])
        registry.remove_recognizer("EmailRecognizer")
        registry.add_recognizer(OfflineEmail())
        self.analyzer: Any = AnalyzerEngine(
            registry=registry,
            nlp_engine=_nlp_engine(str(blank_spacy_dir())),
            supported_languages=["en"],
        )

    def find(self, text: str, extra_identifiers: Sequence[str] = ()) -> list[PHISpan]:
        from feddx.data.deid import PRESIDIO_ENTITY_MAP, PHISpan, resolve_overlaps

        other = {"PERSON": "NAME", "LOCATION": "ADDRESS"}
        spans = [
            PHISpan(
                r.start,
                r.end,
                PRESIDIO_ENTITY_MAP.get(r.entity_type, other.get(r.entity_type, "ID")),
                float(r.score),
            )
            for r in self.analyzer.analyze(text, language="en", score_threshold=0.35)
        ]
        return resolve_overlaps(spans, text)


def evaluate(
    deid: Finder, docs: Sequence[LabeledDoc], use_extra: bool
) -> tuple[dict[str, list[int]], dict[str, list[int]], tuple[int, int], float, int]:
    """(recall counts {entity: [found, typed, total]}, precision {entity: [ok, total]},
    (gold chars redacted, redacted chars), seconds, chars)."""
    recall: dict[str, list[int]] = {}
    precision: dict[str, list[int]] = {}
    char_ok = char_all = 0
    seconds = 0.0
    chars = 0
    for doc in docs:
        t0 = time.perf_counter()
        spans = deid.find(doc.text, doc.extra_identifiers if use_extra else ())
        seconds += time.perf_counter() - t0
        chars += len(doc.text)
        covered = _coverage(len(doc.text), spans)
        gold_chars = [False] * len(doc.text)
        for g in doc.spans:
            r = recall.setdefault(g.entity, [0, 0, 0])
            r[2] += 1
            idx = [i for i in range(g.start, g.end) if not doc.text[i].isspace()]
            if all(covered[i] is not None for i in idx):
                r[0] += 1
                if all(covered[i] == g.entity for i in idx):
                    r[1] += 1
            for i in range(g.start, g.end):
                gold_chars[i] = True
        for s in spans:
            p = precision.setdefault(s.entity, [0, 0])
            p[1] += 1
            if any(gold_chars[s.start : s.end]):
                p[0] += 1
            char_all += s.end - s.start
            char_ok += sum(gold_chars[s.start : s.end])
    return recall, precision, (char_ok, char_all), seconds, chars


def _coverage(n: int, spans: Sequence[PHISpan]) -> list[str | None]:
    cov: list[str | None] = [None] * n
    for s in spans:
        for i in range(s.start, s.end):
            cov[i] = s.entity
    return cov


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.3f}" if b else "  -  "


def report(name: str, deid: Finder, baseline: Finder, docs: Sequence[LabeledDoc]) -> None:
    print(
        f"\n== {name}: {len(docs)} documents, {sum(len(d.text) for d in docs):,} chars, "
        f"{sum(len(d.spans) for d in docs):,} gold spans"
    )
    rows: dict[str, dict[str, str]] = {}
    speeds = []
    base_rec, _, _, base_secs, base_chars = evaluate(baseline, docs, False)
    for ent, (found, _typed, total) in base_rec.items():
        rows.setdefault(ent, {})["base_rec"] = _ratio(found, total)
    base_tot = [sum(v[i] for v in base_rec.values()) for i in (0, 2)]
    rows.setdefault("ALL", {})["base_rec"] = _ratio(base_tot[0], base_tot[1])
    for use_extra in (False, True):
        rec, prec, (cok, call), secs, chars = evaluate(deid, docs, use_extra)
        tag = "extra" if use_extra else "text"
        speeds.append(
            f"{tag}: {chars / secs:,.0f} chars/s ({secs:.1f} s, "
            f"{(chars / secs) / (base_chars / base_secs):.2f}x stock Presidio)"
        )
        for ent in sorted(set(rec) | set(prec)):
            row = rows.setdefault(ent, {})
            found, typed, total = rec.get(ent, [0, 0, 0])
            ok, npred = prec.get(ent, [0, 0])
            row[f"{tag}_n"] = str(total)
            row[f"{tag}_rec"] = _ratio(found, total)
            row[f"{tag}_typed"] = _ratio(typed, total)
            row[f"{tag}_prec"] = _ratio(ok, npred) + f" ({npred})"
        rows.setdefault("ALL", {})[f"{tag}_char_prec"] = _ratio(cok, call)
        totals = [sum(v[i] for v in rec.values()) for i in range(3)]
        pt = [sum(v[i] for v in prec.values()) for i in range(2)]
        all_row = rows["ALL"]
        all_row[f"{tag}_n"] = str(totals[2])
        all_row[f"{tag}_rec"] = _ratio(totals[0], totals[2])
        all_row[f"{tag}_typed"] = _ratio(totals[1], totals[2])
        all_row[f"{tag}_prec"] = _ratio(pt[0], pt[1]) + f" ({pt[1]})"
    header = (
        f"{'entity':8} {'gold':>5} | {'recall':>6} | {'recall':>6} {'typed':>6} {'precision (n)':>15} | "
        f"{'recall':>6} {'typed':>6} {'precision (n)':>15}"
    )
    print(
        f"{'':14} | {'stock':^6} | {'without extra_identifiers':^30} | "
        f"{'with extra_identifiers':^30}"
    )
    print(header)
    print("-" * len(header))
    for ent in [*sorted(e for e in rows if e != "ALL"), "ALL"]:
        r = rows[ent]
        print(
            f"{ent:8} {r.get('text_n', '0'):>5} | {r.get('base_rec', '-'):>6} | "
            f"{r.get('text_rec', '-'):>6} "
            f"{r.get('text_typed', '-'):>6} {r.get('text_prec', '-'):>15} | "
            f"{r.get('extra_rec', '-'):>6} {r.get('extra_typed', '-'):>6} "
            f"{r.get('extra_prec', '-'):>15}"
        )
    print(
        f"char-level precision: text {rows['ALL'].get('text_char_prec')}, "
        f"extra {rows['ALL'].get('extra_char_prec')}"
    )
    print(f"throughput: stock Presidio {base_chars / base_secs:,.0f} chars/s; " + "; ".join(speeds))


def names_before_after(
    name: str, before: Finder, after: Finder, docs: Sequence[LabeledDoc]
) -> None:
    """One line: NAME recall and precision without caller identifiers, without and with NER."""
    cells = []
    for tag, finder in (("patterns only", before), ("with NER", after)):
        rec, prec, _, secs, chars = evaluate(finder, docs, False)
        found, _typed, total = rec.get("NAME", [0, 0, 0])
        ok, npred = prec.get("NAME", [0, 0])
        cells.append(
            f"{tag} recall {_ratio(found, total)} ({found}/{total}), precision "
            f"{_ratio(ok, npred)} ({ok}/{npred}), {chars / secs:,.0f} chars/s"
        )
    print(f"names without extra_identifiers, {name}: " + " -> ".join(cells))


def print_ner_meta(package: str) -> None:
    from feddx.data.deid import ner_pipeline

    meta = ner_pipeline(package).meta
    sources = "; ".join(f"{s.get('name')} ({s.get('license')})" for s in meta.get("sources", []))
    print(
        f"NER model: package {package}, meta name {meta.get('name')!r} version "
        f"{meta.get('version')}, spaCy {meta.get('spacy_version')}, git {meta.get('spacy_git_version')}, "
        f"license {meta.get('license')}; sources: {sources}"
    )
    perf = meta.get("performance", {})
    person = perf.get("ents_per_type", {}).get("PERSON", {})
    print(
        f"  ner labels: {', '.join(meta.get('labels', {}).get('ner', []))}; published ents_f "
        f"{perf.get('ents_f', float('nan')):.3f}, PERSON p {person.get('p', float('nan')):.3f} "
        f"r {person.get('r', float('nan')):.3f} (OntoNotes dev)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description="de-identification recall/precision/throughput")
    ap.add_argument("--n", type=int, default=300, help="synthetic records")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fhir-limit", type=int, default=None, help="at most this many FHIR notes")
    ap.add_argument(
        "--ner-labels", nargs="+", default=None, help="NER labels used (default: DeidConfig's)"
    )
    args = ap.parse_args()

    os.environ.setdefault("FEDDX_DEID_KEY", "bench-deid")
    t0 = time.perf_counter()
    import presidio_analyzer  # noqa: F401  (timed apart: it imports spaCy and transformers)

    from feddx.data.deid import DEFAULT_NER_MODEL, DeidConfig, Deidentifier

    config = DeidConfig() if args.ner_labels is None else DeidConfig(ner_labels=args.ner_labels)
    t1 = time.perf_counter()
    deid = Deidentifier(config)
    t2 = time.perf_counter()
    Deidentifier(config)
    t3 = time.perf_counter()
    print(
        f"set-up: importing presidio {t1 - t0:.2f} s; first Deidentifier {t2 - t1:.2f} s "
        f"(with the NER model); second {t3 - t2:.3f} s"
    )
    print_ner_meta(config.ner_model or DEFAULT_NER_MODEL)
    print(f"NER labels used: {', '.join(config.ner_labels)}")
    patterns = Deidentifier(config.replace(ner_model=None))
    baseline = StockPresidio()

    sets = [
        ("synthetic-pt", synthetic_brazilian_records(args.n, args.seed)),
        ("handwritten (held out)", parse_marked_records(HANDWRITTEN)),
    ]
    if FHIR_DIR.is_dir():
        sets.append(("fhir-synthea", fhir_labeled_notes(FHIR_DIR, args.fhir_limit)))
    else:
        print(f"\n(FHIR notes not found at {FHIR_DIR}: skipped)")
    for name, docs in sets:
        report(name, deid, baseline, docs)
    print()
    for name, docs in sets:
        names_before_after(name, patterns, deid, docs)


if __name__ == "__main__":
    main()

"""pt-BR free-text de-identification: recall per entity on records written for issue 23.

    .venv/bin/python benchmarks/bench_deid_ptbr.py [--file tests/fixtures/deid/ptbr_freetext.txt]

The records (``tests/fixtures/deid/ptbr_freetext.txt``) are narrative notes, patient messages
and letters in Brazilian Portuguese whose names mostly have no cue ("Nome:", "Sr.", "Dr."):
lower-case names, nicknames, relatives named in passing, names with da/dos/D'. They were written
in one pass before measuring and are not used to tune the recognizers. Prints the same table as
``bench_deid.py`` (stock Presidio's recall beside ours, without and with the caller's
identifiers; the matching rules are that script's), the names line with and without the NER
model, and every gold span the default de-identifier leaves in the text (by record and type,
so a reader can see what kind of identifier is missed; the records are fictional).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_deid import StockPresidio, _coverage, names_before_after, report
from deid_labeled_set import parse_marked_records

REPO = Path(__file__).resolve().parents[1]
PTBR = REPO / "tests" / "fixtures" / "deid" / "ptbr_freetext.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description="pt-BR free-text de-identification recall")
    ap.add_argument("--file", type=Path, default=PTBR, help="records marked [[TYPE:value]]")
    args = ap.parse_args()
    os.environ.setdefault("FEDDX_DEID_KEY", "bench-deid")
    from feddx.data.deid import DeidConfig, Deidentifier

    docs = parse_marked_records(args.file)
    deid = Deidentifier(DeidConfig())
    patterns = Deidentifier(DeidConfig(ner_model=None))
    report(f"pt-BR free text ({args.file.name})", deid, StockPresidio(), docs)
    print()
    names_before_after("pt-BR free text", patterns, deid, docs)
    print("\nleft in the text (default de-identifier, no caller identifiers):")
    for doc in docs:
        covered = _coverage(len(doc.text), deid.find(doc.text))
        for g in doc.spans:
            idx = [i for i in range(g.start, g.end) if not doc.text[i].isspace()]
            if not all(covered[i] is not None for i in idx):
                print(f"  {doc.doc_id}: {g.entity} {doc.text[g.start : g.end]!r}")


if __name__ == "__main__":
    main()

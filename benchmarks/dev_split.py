"""Write a dataset's development data (its training split) as JSONL, so that model and config
comparisons never see the test split.

    .venv/bin/python benchmarks/dev_split.py SOURCE:PATH OUT.jsonl [--test-fraction 0.2] [--seed 0]

The training split is exactly the one ``feddx train --data SOURCE:PATH --test-fraction F
--seed S`` trains on (the same :func:`~feddx.data.split.stratified_split`); the held-out test
cases are left out. Then ``feddx train --data jsonl:OUT.jsonl`` holds out a validation split of
the development data (its own ``--test-fraction``) and ``feddx evaluate --data jsonl:OUT.jsonl``
scores that validation split: choices made on it never touch the test split.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="SOURCE:PATH, as feddx train --data")
    parser.add_argument("out", type=Path)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from feddx.data.jsonl import write_jsonl
    from feddx.data.sources import load_cases
    from feddx.data.split import stratified_split

    cases = load_cases(args.data, purpose="split").cases
    train, test = stratified_split(cases, test_fraction=args.test_fraction, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    n = write_jsonl(train, args.out)
    print(f"{args.out}: {n} development cases ({len(test)} test cases left out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

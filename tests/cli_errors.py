"""How the CLI refuses, checked the same way by every CLI test: one line on stderr that starts
``feddx: error:``, never a traceback (the project's rule for bad input)."""

from __future__ import annotations

import pytest


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The error the last command printed, after asserting it is one ``feddx: error:`` line
    with no traceback."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("feddx: error:") and "\n" not in err and "Traceback" not in err
    return err

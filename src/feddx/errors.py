"""Exception types shared by every layer.

Every error a user can cause derives from :class:`FeddxError`; the CLI prints such errors as
one line and exits non-zero, and lets anything else (a bug) show its traceback. Messages name
the file, row or field at fault but never quote patient text.
"""

from __future__ import annotations


class FeddxError(Exception):
    """A user-facing error: bad input, a missing resource, a wrong configuration."""

    exit_code: int = 1


class ConfigError(FeddxError):
    """A configuration file or option is invalid."""

    exit_code = 2


class DataError(FeddxError):
    """A dataset cannot be read at all (a file is missing or unreadable, a source is unknown)."""

    exit_code = 2


class ModelError(FeddxError):
    """A base model or adapter cannot be resolved, loaded or matched."""

    exit_code = 1


class UnknownModelError(ModelError):
    """``--model`` names no model that can be found here (no such alias, file or directory, or
    a hub id absent from the offline cache): an input error, so exit code 2 like a bad option,
    where a model that exists but fails to load stays a runtime failure (1)."""

    exit_code = 2

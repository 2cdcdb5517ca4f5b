"""Stored patient histories, per institution, keyed by pseudonymous patient id, encrypted at rest.

An institution stores a patient's history once (``PUT /v1/patients/{id}/history``) and later
diagnoses name the patient instead of resending it. The store is partitioned by the caller's
institution, which comes from its credentials: another institution's patient is not forbidden
but simply absent (404), so an id reveals nothing across institutions.

On disk: ``root/<HMAC(institution)[:32]>/<HMAC(institution, patient id)>.bin``, mode 0600 in
0700 folders, each file ``nonce (12 bytes) || AES-256-GCM(history JSON)`` with the file's own
name as associated data (a file copied under another patient's name does not decrypt). The
names are keyed HMACs, not plain hashes: record numbers are few enough to brute-force an
unkeyed SHA-256. Both keys are derived (HKDF-SHA256) from one 32-byte secret in the
environment variable :data:`HISTORY_KEY_ENV` (base64 or 64 hex digits); without it the service
refuses to store histories at all (:func:`history_key_from_env`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from feddx.data.schema import Case, History
from feddx.errors import ConfigError, DataError
from feddx.io import atomic_write_bytes

HISTORY_KEY_ENV = "FEDDX_HISTORY_KEY"
_FORMAT = b"feddx-history-v1\x00"
_NONCE = 12


def history_key_from_env(environ: Mapping[str, str] | None = None) -> bytes:
    """The 32-byte history secret from :data:`HISTORY_KEY_ENV`. Raises :class:`ConfigError`
    (one line) when it is unset or not 32 bytes of base64 or hex."""
    raw = (os.environ if environ is None else environ).get(HISTORY_KEY_ENV, "").strip()
    if not raw:
        raise ConfigError(
            f"history_dir is set but {HISTORY_KEY_ENV} is not: stored histories are encrypted "
            'with it (make one with: python -c "import secrets; print(secrets.token_hex(32))")'
        )
    key: bytes | None = None
    try:
        key = bytes.fromhex(raw) if len(raw) == 64 else base64.b64decode(raw, validate=True)
    except (ValueError, binascii.Error):
        key = None
    if key is None or len(key) != 32:
        raise ConfigError(f"{HISTORY_KEY_ENV} must be 32 bytes as 64 hex digits or base64")
    return key


def _subkey(secret: bytes, purpose: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


class HistoryStore:
    """Patient histories under ``root``, encrypted with ``secret`` (see the module docstring)."""

    def __init__(self, root: Path, secret: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.root = Path(root)
        self._names = _subkey(secret, b"feddx history file names")
        self._aead = AESGCM(_subkey(secret, b"feddx history encryption"))

    def _path(self, institution: str, patient_id: str) -> Path:
        inst = hmac.new(self._names, institution.encode(), hashlib.sha256).hexdigest()[:32]
        msg = f"{institution}\x00{patient_id}".encode()
        key = hmac.new(self._names, msg, hashlib.sha256).hexdigest()
        return self.root / inst / f"{key}.bin"

    def get(self, institution: str, patient_id: str) -> History | None:
        """The stored history, or ``None``. Raises :class:`DataError` (naming no patient) if
        the stored file does not decrypt (another key, tampered, truncated) or parse."""
        from cryptography.exceptions import InvalidTag

        path = self._path(institution, patient_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            plain = self._aead.decrypt(data[:_NONCE], data[_NONCE:], _FORMAT + path.name.encode())
            return History.model_validate_json(plain)
        except (InvalidTag, ValueError, ValidationError):
            raise DataError(
                f"stored history {path.name} does not decrypt or is corrupt (another "
                f"{HISTORY_KEY_ENV}?)"
            ) from None

    def put(self, institution: str, patient_id: str, history: History) -> None:
        """Store (replace) the patient's history, encrypted, mode 0600."""
        path = self._path(institution, patient_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        nonce = secrets.token_bytes(_NONCE)
        sealed = self._aead.encrypt(
            nonce, history.model_dump_json().encode(), _FORMAT + path.name.encode()
        )
        atomic_write_bytes(path, nonce + sealed, private=True)

    def delete(self, institution: str, patient_id: str) -> bool:
        """Remove the patient's history; ``False`` if none was stored."""
        path = self._path(institution, patient_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True


def merge_history(case: Case, stored: History) -> Case:
    """``case`` with ``stored`` added to its own history: conditions, medications and allergies
    united (the case's first), encounters merged in date order without duplicates."""
    own = case.history
    encounters = list(dict.fromkeys(stored.encounters + own.encounters))
    dated = sorted((e for e in encounters if e.date), key=lambda e: e.date or dt.date.min)
    undated = [e for e in encounters if not e.date]
    merged = History(
        prior_conditions=tuple(dict.fromkeys(own.prior_conditions + stored.prior_conditions)),
        medications=tuple(dict.fromkeys(own.medications + stored.medications)),
        allergies=tuple(dict.fromkeys(own.allergies + stored.allergies)),
        encounters=tuple(undated + dated),
    )
    return case.model_copy(update={"history": merged})

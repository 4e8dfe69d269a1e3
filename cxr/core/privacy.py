"""Identifiers in, salted hashes out. Patient ids and DICOM UIDs are never stored in clear.

HMAC-SHA256 with a secret salt rather than a bare hash: patient ids are short and guessable, so
an unsalted hash could be reversed by enumerating them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cxr.core.settings import Settings, get_settings

_SALT_FILE = "patient-id-salt"

#: The DICOM identifiers kept, only as salted hashes, and the ``images`` column (and CSV column)
#: holding each. The UIDs and the accession number are the join keys a site holding the salt uses
#: to bring results back to its RIS/PACS records (``hash_identifier`` on its own values).
DICOM_HASHED_COLUMNS = {
    "PatientID": "patient_id_hash",
    "StudyInstanceUID": "study_uid_hash",
    "SeriesInstanceUID": "series_uid_hash",
    "SOPInstanceUID": "sop_uid_hash",
    "AccessionNumber": "accession_hash",
}
#: The join keys the per-image CSV carries (the patient hash stays in SQL only).
JOIN_KEY_COLUMNS = ("study_uid_hash", "series_uid_hash", "sop_uid_hash", "accession_hash")


def _salt(settings: Settings) -> bytes:
    if settings.patient_id_salt is not None:
        return settings.patient_id_salt.get_secret_value().encode()
    path = Path(settings.data_dir) / _SALT_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first; use theirs
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def hash_identifier(value: str, settings: Settings | None = None) -> str:
    """The salted hash of an identifier (hex, 64 characters)."""
    key = _salt(settings or get_settings())
    return hmac.new(key, value.strip().encode("utf-8"), hashlib.sha256).hexdigest()


def _seal_key(settings: Settings) -> bytes:
    """64 bytes for AES-256-SIV, derived from the salt (so no second secret to distribute)."""
    salt = _salt(settings)
    return b"".join(hmac.new(salt, f"cxr-seal-{i}".encode(), hashlib.sha256).digest() for i in (1, 2))


def seal(text: str, settings: Settings | None = None) -> str:
    """``text`` (e.g. the UIDs of a DICOMweb instance) encrypted for a URI: AES-SIV, so the same
    text gives the same token (a re-walk cuts the same chunks) and a token cannot be altered
    unnoticed; URL-safe base64 without padding. Only a host holding the salt can ``unseal`` it."""
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    token = AESSIV(_seal_key(settings or get_settings())).encrypt(text.encode("utf-8"), None)
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")


def unseal(token: str, settings: Settings | None = None) -> str:
    """The text sealed in ``token``; ``ValueError`` if it was sealed with another salt or altered."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return AESSIV(_seal_key(settings or get_settings())).decrypt(raw, None).decode("utf-8")
    except (InvalidTag, binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("token sealed with another salt, or altered") from exc

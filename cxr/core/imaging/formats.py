"""Which file names are images: one policy for the scheduler's walk and for training datasets.

Extension-less files are included because DICOM archives often name files by UID alone
(``1.2.840.113619.2.55.3``, whose "suffix" is all digits, counts too); the decoder gives a clear
reason if one is not an image. Hidden files (a leading dot) never are.
"""

from __future__ import annotations

import os

IMAGE_SUFFIXES = frozenset(
    {"", ".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".webp", ".bmp", ".gif"}
)


def is_image_name(name: str) -> bool:
    """Whether the last path segment ``name`` may hold an image worth decoding."""
    if name.startswith("."):
        return False
    suffix = os.path.splitext(name)[1].lower()
    if suffix[1:].isdigit():
        return True  # a DICOM file named by its UID, e.g. 1.2.840.113619.2.55.3
    return suffix in IMAGE_SUFFIXES

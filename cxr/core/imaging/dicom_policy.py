"""Which DICOM objects are scored as chest films, decided once from the header, before pixels.

A hospital archive holds far more than frontal chest radiographs: CT and MR slices, lateral views,
screenshots with burned-in demographics, raw detector images meant for processing, our own
structured reports. The model was trained on none of these, so scoring one gives a confident
label that means nothing. The policy keeps them out **as skips with a reason**, never as failures:
a skip is a decision, not a fault, so it does not count towards the failure-ratio alert (on an
archive of PA + lateral pairs that alert would otherwise fire on every job).

The rules, each from ``CXR_DICOM_*`` settings (defaults in brackets):

- Modality in ``dicom_modalities`` [CR, DX]; an object without a modality is skipped too.
- BodyPartExamined in ``dicom_body_parts`` [CHEST], or absent (many CR films never fill it).
- ViewPosition in ``dicom_views`` [PA, AP], or absent; laterals (LL, RL, LAT...) are skipped.
- PhotometricInterpretation in ``dicom_photometric`` [the ones the decoder maps onto gray:
  MONOCHROME1, MONOCHROME2, RGB, YBR_FULL, YBR_FULL_422].
- BurnedInAnnotation YES skipped [on]: text in the pixels may be a patient's name, and the
  overlays and secondary captures we write would carry it.
- ImageType DERIVED (value 1) or SECONDARY (value 2) skipped [on]: reformats, screenshots and
  processed copies, not the acquired film.
- PresentationIntentType FOR PROCESSING skipped [on]: raw detector data, not the image a
  radiologist (or the training set) sees.

Only header values that are codes (CS) appear in a reason, cut short and made printable; no
identifying value is ever read here. Non-DICOM images are not subject to this policy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cxr.core.errors import ImageError
from cxr.core.outcomes import SkipReason

if TYPE_CHECKING:
    from cxr.core.settings import Settings

DEFAULT_MODALITIES = frozenset({"CR", "DX"})
DEFAULT_BODY_PARTS = frozenset({"CHEST"})
DEFAULT_VIEWS = frozenset({"PA", "AP"})
#: What ``cxr.core.imaging.dicom`` turns into gray correctly (pydicom converts YBR to RGB).
DEFAULT_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"})
_CODE_LIMIT = 24  # a CS value is at most 16 characters; anything longer is cut


class ImageSkipped(ImageError):
    """A readable image this system deliberately does not score, with the policy's reason."""

    def __init__(self, reason: SkipReason, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


def parse_codes(text: str | Iterable[str]) -> frozenset[str]:
    """``"CR, dx"`` (a setting) or an iterable → ``{"CR", "DX"}``; blanks dropped."""
    items = text.split(",") if isinstance(text, str) else text
    return frozenset(item.strip().upper() for item in items if item.strip())


def _code(value: Any) -> str:
    """A header code as one short printable upper-case string (never more than a code)."""
    text = "\\".join(str(v) for v in value) if _is_multi(value) else str(value or "")
    text = "".join(ch if ch.isprintable() else "?" for ch in text.strip().upper())
    return text if len(text) <= _CODE_LIMIT else text[: _CODE_LIMIT - 1] + "…"


def _is_multi(value: Any) -> bool:
    return not isinstance(value, str | bytes) and hasattr(value, "__iter__")


def _values(value: Any) -> list[str]:
    """A possibly multi-valued CS attribute as a list of upper-case strings."""
    if value is None:
        return []
    items = list(value) if _is_multi(value) else str(value).split("\\")
    return [str(item).strip().upper() for item in items]


def _listed(codes: frozenset[str]) -> str:
    return ", ".join(sorted(codes)) or "none"


@dataclass(frozen=True)
class DicomPolicy:
    """What is scored; ``check(ds)`` raises ``ImageSkipped`` for anything else."""

    modalities: frozenset[str] = DEFAULT_MODALITIES
    body_parts: frozenset[str] = DEFAULT_BODY_PARTS
    views: frozenset[str] = DEFAULT_VIEWS
    photometric: frozenset[str] = DEFAULT_PHOTOMETRIC
    skip_burned_in: bool = True
    skip_derived: bool = True
    skip_for_processing: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> DicomPolicy:
        return cls(
            modalities=parse_codes(settings.dicom_modalities),
            body_parts=parse_codes(settings.dicom_body_parts),
            views=parse_codes(settings.dicom_views),
            photometric=parse_codes(settings.dicom_photometric),
            skip_burned_in=settings.dicom_skip_burned_in,
            skip_derived=settings.dicom_skip_derived,
            skip_for_processing=settings.dicom_skip_for_processing,
        )

    def check(self, ds: Any) -> None:
        """Raise ``ImageSkipped`` naming the first rule ``ds`` (a pydicom dataset) breaks.

        Order: what the object is (modality, body part), then which film (view), then whether
        the pixels are the presented original (intent, image type, burned-in text, colour).
        """
        modality = _code(ds.get("Modality", ""))
        if modality not in self.modalities:
            shown = modality or "absent"
            raise ImageSkipped(SkipReason.DICOM_MODALITY, f"{shown} (scored: {_listed(self.modalities)})")
        body_part = _code(ds.get("BodyPartExamined", ""))
        if body_part and body_part not in self.body_parts:
            scored = _listed(self.body_parts)
            raise ImageSkipped(SkipReason.DICOM_BODY_PART, f"{body_part} (scored: {scored} or absent)")
        view = _code(ds.get("ViewPosition", ""))
        if view and view not in self.views:
            raise ImageSkipped(SkipReason.DICOM_VIEW, f"{view} (scored: {_listed(self.views)} or absent)")
        if self.skip_for_processing and _code(ds.get("PresentationIntentType", "")) == "FOR PROCESSING":
            raise ImageSkipped(SkipReason.DICOM_FOR_PROCESSING)
        if self.skip_derived:
            image_type = _values(ds.get("ImageType"))
            if image_type[:1] == ["DERIVED"] or image_type[1:2] == ["SECONDARY"]:
                raise ImageSkipped(SkipReason.DICOM_DERIVED, _code(image_type[:2]))
        if self.skip_burned_in and _code(ds.get("BurnedInAnnotation", "")) == "YES":
            raise ImageSkipped(SkipReason.DICOM_BURNED_IN)
        photometric = _code(ds.get("PhotometricInterpretation", ""))
        if photometric and photometric not in self.photometric:
            raise ImageSkipped(SkipReason.DICOM_PHOTOMETRIC, photometric)

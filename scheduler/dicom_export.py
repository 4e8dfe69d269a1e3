"""Results back as DICOM: one Structured Report per scored DICOM image of a job, and its Grad-CAM
overlay (when the job explained it) as a Secondary Capture in the same study, a new series.

Research teams review results in their viewer (OHIF, the PACS itself), so a job's predictions
can be written as DICOM SR objects in the source image's study (a new series), the way MONAI
Deploy's SR writer does: the model's name, version and file sha256, the class probabilities, the
label, the decision at each operating point the model ships, the shift flag when the model has a
reference, and the statement that this is a research result not for diagnostic use. The document
is marked **PARTIAL** (completion) and **UNVERIFIED** (verification): no person signed it.

Why highdicom (not bare pydicom): it builds the SR IOD from the source instance (patient and
study modules, the evidence sequence that references the source study, series and instance),
validates each content item's value type and relationship, and installs cleanly beside pydicom 3
with the decoders we already ship. Writing those modules by hand would be a second, untested
copy of the standard.

Privacy. The copy kept in object storage (``reports/jobs/<job>/dicom/<n>.dcm``) has the
patient's name, id and birth date (and the accession number) emptied: objects must never hold
them. It still names the source study, series and instance (an SR that references nothing is
useless), which is why it lives beside the job's report. The copy sent back with
``--write-back`` (STOW-RS, to the PACS the job came from) keeps the source's patient module, so
the PACS files it in the right study; it exists only in memory on the way. UIDs are derived from
the job and the source instance, so an export run twice writes the same objects (a PACS treats
the second STOW as the same instances).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

from cxr.core.dicomweb import client_for, is_dicomweb, parse_source
from cxr.core.errors import CxrError, PermanentError
from cxr.core.imaging.decode import is_dicom
from cxr.core.outcomes import Outcome, one_line
from cxr.core.settings import Settings
from cxr.core.storage import open_store, read_uri
from scheduler.summary import ImageRow, get_job, image_rows

log = logging.getLogger(__name__)

DISCLAIMER = "Research result, not for diagnostic use. Not reviewed by a clinician."
_SCHEME = "99CXR"  # a local coding scheme ("99" prefix: private, PS3.16 section 8)
#: Emptied in the copy kept in object storage (the accession number is a join key: hashed elsewhere).
_REMOVED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "AccessionNumber",
)

#: Patient and study attributes (type 2: present, maybe empty) the SR takes from its source.
_TYPE2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)  # fmt: skip


@dataclass(frozen=True)
class ExportSummary:
    written: int
    sent: int
    skipped: int  # scored images that are not DICOM (PNG, JPEG): nothing to attach an SR to
    keys: list[str]
    unusable: int = 0  # DICOM headers an SR cannot reference (no series UID...): logged, left out
    overlay_keys: list[str] = field(default_factory=list)  # Grad-CAM overlays as Secondary Capture


def _code(value: str, meaning: str, scheme: str = _SCHEME) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def build_sr(
    source: Any, row: ImageRow, model: dict[str, Any], series_uid: str, sop_uid: str, instance_number: int = 1
) -> Any:
    """The SR for one scored image: ``source`` is its header (pydicom dataset, no pixels
    needed), ``model`` holds name, version, sha256, classes and operating points."""
    import highdicom as hd

    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list[Any] = [
        hd.sr.TextContentItem(_code("disclaimer", "Disclaimer"), DISCLAIMER, relationship_type=contains),
        hd.sr.TextContentItem(
            hd.sr.CodedConcept("111001", "DCM", "Algorithm Name"), model["name"], relationship_type=contains
        ),
        hd.sr.TextContentItem(
            hd.sr.CodedConcept("111003", "DCM", "Algorithm Version"),
            str(model["version"]),
            relationship_type=contains,
        ),
        hd.sr.TextContentItem(
            _code("model-sha256", "Model file SHA-256"), model["sha256"], relationship_type=contains
        ),
        hd.sr.TextContentItem(_code("label", "Predicted label"), row.label or "", relationship_type=contains),
    ]
    probabilities = row.probabilities or {}
    for name in model["classes"]:
        if name in probabilities:
            items.append(
                hd.sr.NumContentItem(
                    _code(f"p-{name}"[:16], f"Probability of {name}"),
                    float(probabilities[name]),
                    hd.sr.CodedConcept("1", "UCUM", "no units"),
                    relationship_type=contains,
                )
            )
    for name, threshold in model["operating_points"].items():
        if name in probabilities:
            decision = "positive" if probabilities[name] >= threshold else "negative"
            items.append(
                hd.sr.TextContentItem(
                    _code(f"op-{name}"[:16], f"{name} at the operating point {threshold:.4f}"),
                    decision,
                    relationship_type=contains,
                )
            )
    if row.out_of_distribution is not None:
        items.append(
            hd.sr.TextContentItem(
                _code("shift", "Unlike the training data"),
                "yes" if row.out_of_distribution else "no",
                relationship_type=contains,
            )
        )
    items.append(
        hd.sr.ImageContentItem(
            hd.sr.CodedConcept("121112", "DCM", "Source of Measurement"),
            source.SOPClassUID,
            source.SOPInstanceUID,
            relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
        )
    )
    root = hd.sr.ContainerContentItem(_code("cxr-result", "Chest X-ray AI research result"))
    root.ContentSequence = hd.sr.ContentSequence(items)
    sr = hd.sr.ComprehensiveSR(
        evidence=[_as_evidence(source)],
        content=root,
        series_instance_uid=series_uid,
        series_number=9901,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer="cxr (research software)",
        is_complete=False,  # CompletionFlag PARTIAL
        is_final=False,
        is_verified=False,  # VerificationFlag UNVERIFIED
    )
    sr.SeriesDescription = "AI research result - not for diagnostic use"
    return sr


def _as_evidence(source: Any) -> Any:
    """The source header with the type 2 attributes highdicom copies present (maybe empty)."""
    evidence = deepcopy(source)
    for tag in _TYPE2_COPIED:  # many files omit some
        if tag not in evidence:
            setattr(evidence, tag, "")
    return evidence


def build_overlay_sc(
    source: Any, overlay_png: bytes, series_uid: str, sop_uid: str, instance_number: int = 1
) -> Any:
    """The Grad-CAM overlay (an RGB PNG the worker rendered) as a Secondary Capture in the
    source's study, a new series; labelled as a research result in its descriptions."""
    import highdicom as hd
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(overlay_png)) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=_as_evidence(source),
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=9902,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer="cxr (research software)",
        patient_orientation=_orientation(source),
    )
    sc.SeriesDescription = "AI heatmap (Grad-CAM) - not for diagnostic use"
    sc.ImageComments = DISCLAIMER
    sc.BurnedInAnnotation = "NO"
    return sc


def _orientation(source: Any) -> tuple[str, str]:
    """The film's PatientOrientation (the overlay has the film's geometry); without one, the
    display convention of a frontal chest film: rows towards the patient's left, columns down."""
    value = [str(v) for v in (source.get("PatientOrientation") or [])]
    return (value[0], value[1]) if len(value) == 2 and all(value) else ("L", "F")


def _overlay_uri(settings: Settings, job: Any, sha256: str | None) -> str | None:
    """The overlay PNG of this image by the job's model version (any job may have made it: an
    image is explained once per version and method), as the report finds it."""
    from sqlalchemy import select

    from cxr.core.db.models import Artifact
    from cxr.core.db.session import session_scope

    if sha256 is None:
        return None
    prefix = f"/{job.model_name}/{job.model_version}/"
    with session_scope(settings) as session:
        uris = session.scalars(
            select(Artifact.uri)
            .where(Artifact.image_sha256 == sha256, Artifact.kind == "overlay")
            .order_by(Artifact.id)
        ).all()
    return next((uri for uri in uris if prefix in uri), None)


def _encoded(ds: Any) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _without_patient(ds: Any) -> Any:
    copy = deepcopy(ds)  # Dataset.copy() shares the elements: emptying them would empty the original
    for tag in _REMOVED:
        if tag in copy:
            copy[tag].value = ""  # type 2 in the Patient module: present, empty
    return copy


def _scored_dicom(settings: Settings, job_id: str) -> Iterator[tuple[ImageRow, Any]]:
    import pydicom

    for row in image_rows(settings, job_id):
        if row.outcome != Outcome.SCORED:
            continue
        try:
            data = read_uri(row.uri, settings)
        except CxrError as exc:
            log.warning("no SR for an image of job %s: %s", job_id, exc)
            continue
        if not is_dicom(data):
            yield row, None
            continue
        yield row, pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def export_job(settings: Settings, job_id: str, *, write_back: bool = False) -> ExportSummary:
    """Write an SR for every scored DICOM image of ``job_id`` to object storage and, with
    ``write_back``, send them to the job's DICOMweb source with STOW-RS."""
    from pydicom.uid import generate_uid

    from modelstore import open_model_store

    try:
        import highdicom  # noqa: F401
    except ImportError as exc:
        raise PermanentError("writing DICOM SR needs the dicom extra: pip install -e .[dicom]") from exc
    job = get_job(settings, job_id)
    if write_back and not is_dicomweb(job.source):
        raise PermanentError("--write-back needs a job whose source is a dicomweb:// PACS")
    manifest = open_model_store(settings).manifest(job.model_name, job.model_version)
    model = {
        "name": job.model_name,
        "version": job.model_version,
        "sha256": manifest.sha256,
        "classes": manifest.classes,
        "operating_points": {name: point.threshold for name, point in manifest.operating_points.items()},
    }
    store = open_store(settings=settings)
    written = skipped = unusable = 0
    keys: list[str] = []
    overlay_keys: list[str] = []
    outgoing: list[bytes] = []
    for row, source in _scored_dicom(settings, job_id):
        if source is None:
            skipped += 1
            continue
        try:
            # A series lives in one study: one SR series (and one SC series) per job and study.
            study = str(source.StudyInstanceUID)
            series_uid = generate_uid(entropy_srcs=["cxr-sr-series", job_id, study])
            sc_series_uid = generate_uid(entropy_srcs=["cxr-sc-series", job_id, study])
            sop_uid = generate_uid(entropy_srcs=["cxr-sr", job_id, row.sha256 or row.uri])
            sr = build_sr(source, row, model, series_uid, sop_uid, instance_number=written + 1)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # one bad header, one SR
            log.warning("no SR for image %s of job %s: %s", row.sha256, job_id, one_line(exc))
            unusable += 1
            continue
        key = f"reports/jobs/{job_id}/dicom/{written + 1:06d}.dcm"
        store.put(key, _encoded(_without_patient(sr)), "application/dicom")
        keys.append(key)
        written += 1
        if write_back:
            outgoing.append(_encoded(sr))
        overlay = _overlay_uri(settings, job, row.sha256)
        if overlay is None:
            continue
        sc_uid = generate_uid(entropy_srcs=["cxr-sc", job_id, row.sha256 or row.uri])
        try:
            sc = build_overlay_sc(source, read_uri(overlay, settings), sc_series_uid, sc_uid, written)
        except (CxrError, OSError, AttributeError, KeyError, TypeError, ValueError) as exc:
            log.warning("no overlay SC for image %s of job %s: %s", row.sha256, job_id, one_line(exc))
            continue
        overlay_key = key.removesuffix(".dcm") + "-overlay.dcm"
        store.put(overlay_key, _encoded(_without_patient(sc)), "application/dicom")
        overlay_keys.append(overlay_key)
        if write_back:
            outgoing.append(_encoded(sc))
    sent = 0
    if outgoing:
        client = client_for(parse_source(job.source).base_url, settings)
        for start in range(0, len(outgoing), 20):
            client.store(outgoing[start : start + 20])
            sent += len(outgoing[start : start + 20])
    log.info("job %s: %d SR and %d SC objects written, %d objects sent to the PACS",
             job_id, written, len(overlay_keys), sent)  # fmt: skip
    return ExportSummary(written, sent, skipped, keys, unusable, overlay_keys)

"""Which films of a scored job to label first (``cxr jobs sample``).

A new hospital can afford to label a few dozen films. Which ones matters less than people hope
(docs/NEW_SITE.md measures it), but some choices are plainly better than others: films the
model cannot decide between classes (``uncertain``: the smallest margin between the two highest
probabilities), films spread over the model's feature space so one scanner or ward does not fill
the budget (``diverse``: k-center greedy on the pooled features), or an equal share of each
predicted label (``stratified``), against plain ``random``.

The selection functions work on arrays (no SQL, no Keras) so they are cheap to test and the
benchmark can call them on cached features; ``sample_job`` does the I/O. Every choice is seeded:
the same job, strategy, n and seed give the same films.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from cxr.core.errors import ConfigurationError
from cxr.core.outcomes import Outcome
from cxr.core.settings import Settings

if TYPE_CHECKING:
    from cxr.core.db.models import Job
    from modelstore.runtime import ModelRuntime

log = logging.getLogger(__name__)

Strategy = Literal["uncertain", "diverse", "stratified", "random"]
STRATEGIES: tuple[Strategy, ...] = ("uncertain", "diverse", "stratified", "random")
#: The manifest template's columns: what ``training_jobs.datasets`` reads back once labelled.
TEMPLATE_COLUMNS = ("path", "label", "patient_id", "site")


def margins(probabilities: np.ndarray) -> np.ndarray:
    """Top probability minus the runner-up, per film: 0 is a coin toss, 1 a certain call."""
    ordered = np.sort(np.asarray(probabilities, dtype=np.float64), axis=1)
    return ordered[:, -1] - ordered[:, -2]


def k_center_greedy(features: np.ndarray, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` indices that cover the feature space: a seeded first film, then each time the film
    farthest from every film chosen so far (Sener & Savarese's core-set heuristic). Features are
    standardised first so that no handful of large channels decides the distances."""
    x = np.asarray(features, dtype=np.float64)
    x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    chosen = [int(rng.integers(len(x)))]
    nearest = np.linalg.norm(x - x[chosen[0]], axis=1)
    while len(chosen) < min(n, len(x)):
        nearest[chosen] = -1.0
        pick = int(np.argmax(nearest))  # ties: the lowest index, deterministic
        chosen.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(x - x[pick], axis=1))
    return chosen


def select(
    strategy: Strategy,
    n: int,
    probabilities: np.ndarray,
    *,
    seed: int = 0,
    features: np.ndarray | None = None,
) -> list[int]:
    """Indices (into the rows of ``probabilities``) of the ``n`` films to label, in the order a
    labeller should take them."""
    count = len(probabilities)
    n = min(n, count)
    rng = np.random.default_rng(seed)
    if n <= 0:
        return []
    if strategy == "random":
        return [int(i) for i in rng.permutation(count)[:n]]
    if strategy == "uncertain":
        # Smallest margin first; a seeded shuffle beforehand breaks ties without favouring order.
        shuffled = rng.permutation(count)
        order = shuffled[np.argsort(margins(probabilities)[shuffled], kind="stable")]
        return [int(i) for i in order[:n]]
    if strategy == "stratified":
        predicted = np.asarray(probabilities).argmax(axis=1)
        queues = [list(rng.permutation(np.flatnonzero(predicted == c))) for c in np.unique(predicted)]
        out: list[int] = []
        while len(out) < n:  # round robin over the predicted labels
            for queue in queues:
                if queue and len(out) < n:
                    out.append(int(queue.pop(0)))
        return out
    if strategy == "diverse":
        if features is None:
            raise ConfigurationError("the diverse strategy needs the films' pooled features")
        return k_center_greedy(features, n, rng)
    raise ConfigurationError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


@dataclass(frozen=True)
class Picked:
    """One film to label, with what the model said about it."""

    uri: str
    sha256: str
    predicted: str
    probabilities: dict[str, float]
    margin: float


def write_template(path: Path, picked: Sequence[Picked], site: str = "") -> None:
    """The manifest template, ``label`` and ``patient_id`` left for the labeller (a row left
    without a patient id counts as its own patient)."""
    with Path(path).open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(TEMPLATE_COLUMNS)
        for film in picked:
            writer.writerow([film.uri, "", "", site])


def contact_sheet(picked: Sequence[Picked], thumbnails: Sequence[bytes | None], title: str) -> str:
    """One self-contained HTML page: each film's thumbnail (an inline PNG), its URI and what the
    model said. Every string from the archive is escaped: a file name is data, never markup."""
    cards = []
    for number, (film, png) in enumerate(zip(picked, thumbnails, strict=True), start=1):
        image = (
            f'<img alt="film {number}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
            if png
            else '<div class="missing">no thumbnail</div>'
        )
        probs = ", ".join(f"{html.escape(k)} {v:.2f}" for k, v in film.probabilities.items())
        cards.append(
            f"<figure>{image}<figcaption><b>{number}</b> {html.escape(film.uri)}<br>"
            f"model: {html.escape(film.predicted)} ({probs}; margin {film.margin:.2f})<br>"
            "label: ______</figcaption></figure>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif}}"
        "figure{display:inline-block;width:260px;margin:6px;vertical-align:top;font-size:12px;"
        "word-break:break-all}img{width:256px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Research use only. Not for clinical decisions. Write each "
        "label into the CSV row of the same number.</p>" + "".join(cards) + "</body></html>"
    )


def thumbnail(pixels: np.ndarray, size: int = 256) -> bytes:
    """A decoded film (gray in [0, 1]) as a small PNG."""
    from PIL import Image

    image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8), mode="L")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class SampleResult:
    job_id: str
    strategy: Strategy
    seed: int
    candidates: int
    picked: list[Picked]


def sample_job(
    settings: Settings,
    job_id: str,
    n: int,
    strategy: Strategy,
    *,
    seed: int = 0,
    out: Path,
    sheet: Path | None = None,
    site: str = "",
) -> SampleResult:
    """Pick ``n`` films of a scored job (its predictions in SQL; for ``diverse`` the pooled
    features of the job's own model version, computed on the job's images), write the template
    and, with ``sheet``, the contact sheet."""
    from scheduler.summary import get_job, image_rows

    job = get_job(settings, job_id)
    rows, seen = [], set()
    for row in image_rows(settings, job_id):  # URI order: deterministic
        if row.outcome not in (Outcome.SCORED, Outcome.SKIPPED) or not row.probabilities or not row.sha256:
            continue
        if row.sha256 in seen:  # the same film under two names is labelled once
            continue
        seen.add(row.sha256)
        rows.append(row)
    if not rows:
        raise ConfigurationError(f"job {job_id} has no scored films to sample from")
    classes = list(rows[0].probabilities)
    probabilities = np.asarray([[row.probabilities[c] for c in classes] for row in rows])
    need_pixels = strategy == "diverse" or sheet is not None
    pixels = _decode([row.uri for row in rows], settings) if need_pixels else []
    features = None
    runtime = None
    if strategy == "diverse":
        runtime = _job_runtime(settings, job)
        features = _features(runtime, pixels)
    index = select(strategy, n, probabilities, seed=seed, features=features)
    picked = [
        Picked(rows[i].uri, rows[i].sha256, classes[int(probabilities[i].argmax())],
               {c: float(p) for c, p in zip(classes, probabilities[i], strict=True)},
               float(margins(probabilities[i : i + 1])[0]))
        for i in index
    ]  # fmt: skip
    write_template(out, picked, site)
    if sheet is not None:
        thumbs = [thumbnail(pixels[i]) if pixels[i] is not None else None for i in index]
        title = f"cxr: {len(picked)} films of job {job_id} to label ({strategy}, seed {seed})"
        Path(sheet).write_text(contact_sheet(picked, thumbs, title), encoding="utf-8")
    log.info("job %s: picked %d of %d films (%s, seed %d)", job_id, len(picked), len(rows), strategy, seed)
    return SampleResult(job_id, strategy, seed, len(rows), picked)


def _decode(uris: Sequence[str], settings: Settings) -> list[np.ndarray | None]:
    from cxr.core.errors import ImageError, ObjectNotFound
    from cxr.core.imaging import decode_image
    from cxr.core.storage import read_uri

    out: list[np.ndarray | None] = []
    for uri in uris:
        try:
            data = read_uri(uri, settings)
            decoded = decode_image(
                data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
            )
            out.append(decoded.pixels)
        except (ImageError, ObjectNotFound) as exc:  # gone or changed since the job scored it
            log.warning("cannot read %s any more: %s", uri, exc)
            out.append(None)
    return out


def _job_runtime(settings: Settings, job: Job) -> ModelRuntime:
    """The job's pinned model version (sha256-checked), as the worker ran it."""
    from modelstore import open_model_store
    from modelstore.runtime import ModelRuntime
    from modelstore.store import ResolvedModel

    pinned = ResolvedModel(job.model_name, job.model_version, job.model_sha256)
    return ModelRuntime.load(open_model_store(settings, catalogue=False), pinned, warm_up=False)


def _features(runtime: ModelRuntime, pixels: Sequence[np.ndarray | None]) -> np.ndarray:
    """Pooled features of each film; a film that can no longer be read sits at the mean (it is
    then never the farthest one, so it is not picked for diversity)."""
    inputs = [runtime.preprocess(p) for p in pixels if p is not None]
    batch = 32
    parts = [runtime.features(np.stack(inputs[i : i + batch])) for i in range(0, len(inputs), batch)]
    found = np.concatenate(parts)
    out = np.tile(found.mean(axis=0), (len(pixels), 1))
    out[[i for i, p in enumerate(pixels) if p is not None]] = found
    return out

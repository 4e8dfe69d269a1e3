"""Pictures for the job report, as data URIs: the label chart, the shortcut-score histogram,
the heatmaps' colour bar, and films and overlays at a size a reader can judge.

Everything is embedded so that the page can be mailed or opened from object storage without a
server; films are JPEG-encoded at most ``FULL_PX`` on their long side (the gallery shows them
smaller and opens them full size with CSS alone: the page carries no script).
"""

from __future__ import annotations

import base64
import io
import logging

from cxr.core.errors import CxrError
from cxr.core.imaging import decode_image
from cxr.core.labels import is_positive
from cxr.core.settings import Settings
from cxr.core.storage import read_uri
from cxr.explain.render import OVERLAY_COLORMAP

log = logging.getLogger(__name__)

#: Long side of a film or overlay in the report, in pixels.
FULL_PX = 1024


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure_uri(fig) -> str:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    return data_uri(buffer.getvalue())


def label_chart(by_label: dict[str, int]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=100)
    labels, counts = list(by_label), list(by_label.values())
    ax.barh(labels, counts, color=["#c0392b" if is_positive(x) else "#2e86c1" for x in labels])
    for y, count in enumerate(counts):
        ax.text(count, y, f" {int(count)}", va="center")
    ax.set_xlabel("images")
    ax.set_title("Predicted labels")
    fig.tight_layout()
    return _figure_uri(fig)


def shortcut_chart(scores: list[float], threshold: float) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=100)
    ax.hist(scores, bins=[i / 20 for i in range(21)], color="#7d3c98")
    ax.axvline(threshold, color="#c0392b", linestyle="--", label=f"alert above {threshold}")
    ax.axvline(0.4375, color="#888", linestyle=":", label="uniform heatmap (0.44)")
    ax.set_xlabel("share of heatmap energy outside the chest box")
    ax.set_ylabel("images")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _figure_uri(fig)


def colour_bar() -> str:
    """The overlays' colour scale (``cxr.explain.render.OVERLAY_COLORMAP``), low to high; the page
    labels its ends in text, which stays legible at any size."""
    plt = _pyplot()
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    fig, ax = plt.subplots(figsize=(3.2, 0.22), dpi=100)
    fig.colorbar(
        plt.cm.ScalarMappable(norm=Normalize(0, 1), cmap=colormaps[OVERLAY_COLORMAP]),
        cax=ax, orientation="horizontal", ticks=[],
    )  # fmt: skip
    fig.subplots_adjust(left=0, right=1, top=1, bottom=0)
    return _figure_uri(fig)


def _jpeg(image) -> str:  # type: ignore[no-untyped-def]
    image.thumbnail((FULL_PX, FULL_PX))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return data_uri(buffer.getvalue(), "image/jpeg")


def film(uri: str, settings: Settings) -> str | None:
    """The film as the model's decoder sees it (gray, windowed), or None if it cannot be read."""
    from PIL import Image

    try:
        decoded = decode_image(
            read_uri(uri, settings), max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )
    except (CxrError, OSError) as exc:
        log.warning("no picture of %s: %s", uri, exc)
        return None
    return _jpeg(Image.fromarray((decoded.pixels * 255).astype("uint8"), "L"))


def overlay(uri: str, settings: Settings) -> str | None:
    """A stored heatmap overlay, re-encoded at the report's size, or None if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        return _jpeg(Image.open(io.BytesIO(read_uri(uri, settings))))
    except (CxrError, OSError, UnidentifiedImageError) as exc:
        log.warning("overlay %s unreadable: %s", uri, exc)
        return None

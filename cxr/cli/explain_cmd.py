"""``cxr explain``: explain a model's calls on image files, with no servers needed.

The model comes from the model store (embedded defaults: the local object store under
``CXR_DATA_DIR``); the PNGs, heatmaps and ROI JSON go to ``--out``, and with ``--store`` also to
object storage under the artifact keys the worker uses.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import click

from cxr.cli.common import emit_json, handle_errors, json_option, ready_settings
from cxr.explain.methods import METHODS  # NumPy only: Keras loads inside the command

_CHUNK = 16  # images decoded and explained together: bounds memory for long lists


@click.command()
@click.argument(
    "images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--model", "model_ref", required=True, help="NAME@VERSION, NAME@ALIAS or NAME.")
@click.option("--method", type=click.Choice(list(METHODS)), default="gradcam", show_default=True)
@click.option("--layer", help="Layer to explain (default: the manifest's gradcam_layer).")
@click.option("--class", "class_name", help="Class to explain (default: each image's predicted class).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--store", "to_store", is_flag=True, help="Also write the artifacts to object storage.")
@json_option
@handle_errors
def explain(
    images: tuple[Path, ...], model_ref: str, method: str, layer: str | None, class_name: str | None,
    out_dir: Path, to_store: bool, as_json: bool,
) -> None:  # fmt: skip
    """Predict and explain IMAGE files: label, probabilities, regions of interest, shortcut score."""
    from cxr.core.imaging import decode_image
    from cxr.core.storage import open_store
    from cxr.explain.artifacts import explanation_params, write_artifacts
    from cxr.explain.render import render_files
    from modelstore import open_model_store
    from modelstore.runtime import ModelRuntime

    settings = ready_settings()
    models = open_model_store(settings)
    runtime = ModelRuntime.load(models, models.resolve(model_ref), warm_up=False)
    manifest = runtime.manifest
    assert manifest is not None  # loaded from the store
    explainer = runtime.explainer(method)
    artifact_store = open_store(settings=settings) if to_store else None
    results: list[dict[str, Any]] = []
    for start in range(0, len(images), _CHUNK):
        paths = images[start : start + _CHUNK]
        blobs = [path.read_bytes() for path in paths]
        films = [
            decode_image(
                b,
                max_bytes=settings.max_image_bytes,
                max_pixels=settings.max_image_pixels,
                target_side=runtime.contract.decode_side,  # the pixels scoring sees
            )
            for b in blobs
        ]
        decoded = [film.pixels for film in films]
        try:
            scales = [film.scale for film in films]
            explained = explainer.explain(decoded, class_name=class_name, layer=layer, scales=scales)
        except ValueError as exc:  # unknown class or layer: the user's input, said plainly
            raise click.UsageError(str(exc)) from exc
        for path, data, pixels, item in zip(paths, blobs, decoded, explained, strict=True):
            sha256 = hashlib.sha256(data).hexdigest()
            files = render_files(item, pixels)
            target = out_dir / f"{path.stem}_{sha256[:8]}"
            target.mkdir(parents=True, exist_ok=True)
            for name, content in files.items():
                (target / name).write_bytes(content)
            record = {"image": str(path), "sha256": sha256, **item.summary(),
                      "files": sorted(str(target / name) for name in files)}  # fmt: skip
            if artifact_store is not None:
                written = write_artifacts(artifact_store, files, model_name=manifest.name,
                                          model_version=manifest.version, method=item.method,
                                          image_sha256=sha256, params=explanation_params(item))  # fmt: skip
                record["artifacts"] = [a.uri for a in written]
            results.append(record)
    if as_json:
        emit_json({"model": manifest.ref, "method": method, "classes": manifest.classes, "images": results})
        return
    for record in results:
        _print_record(record)


def _print_record(record: dict[str, Any]) -> None:
    probabilities = ", ".join(f"{c} {p:.3f}" for c, p in record["probabilities"].items())
    click.echo(f"{record['image']}: {record['label']} ({probabilities})")
    click.echo(f"  {record['method']} on {record['layer']} for {record['explained_class']}; "
               f"shortcut score {_score(record['shortcut_score'])}")  # fmt: skip
    for region in record["rois"]:
        click.echo(f"  roi {region['box']} share {region['share']:.3f}")
    click.echo(f"  files in {Path(record['files'][0]).parent}")


def _score(value: float | None) -> str:
    return "undefined (no positive evidence)" if value is None else f"{value:.3f}"

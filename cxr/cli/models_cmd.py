"""``cxr models``: the model registry from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import click
from rich.console import Console
from rich.table import Table

from cxr.cli.common import contrast_option, emit_json, handle_errors, json_option, ready_settings
from cxr.core.imaging.contract import Normalization


def _store():
    from modelstore import open_model_store

    return open_model_store(ready_settings())


def _name_version(ref: str, version: str | None) -> tuple[str, int]:
    """``NAME@VERSION`` (or ``NAME@ALIAS``/``NAME@latest``, resolved now) as every other command
    takes it, or the older ``NAME VERSION``."""
    from cxr.core.errors import PermanentError
    from modelstore import parse_ref

    if version is not None:
        if "@" in ref or not version.isdigit():
            raise PermanentError(f"give NAME@VERSION or NAME VERSION, got {ref!r} {version!r}")
        return parse_ref(ref)[0], int(version)
    if "@" not in ref:
        raise PermanentError(f"give the version as NAME@VERSION (e.g. {ref}@3), got {ref!r}")
    name, selector = parse_ref(ref)
    if selector.isdigit():
        return name, int(selector)
    resolved = _store().resolve(ref)
    return resolved.name, resolved.version


@click.group()
def models() -> None:
    """List, inspect, promote, pull and import models."""


@models.command("list")
@json_option
@handle_errors
def list_models(as_json: bool) -> None:
    """Every model with its versions and aliases. A model or alias whose documents are broken is
    reported on stderr (and under ``problems`` in JSON); the others are still listed."""
    from cxr.core.errors import ModelStoreError

    store = _store()
    rows = []
    problems: list[str] = []
    for name in store.names():
        versions = store.versions(name)
        try:
            latest = store.manifest(name, versions[-1])
        except ModelStoreError as exc:
            problems.append(f"model {name}: {exc}")
            continue
        broken = store.alias_problems(name)
        problems.extend(f"alias {name}@{alias}: {why}" for alias, why in sorted(broken.items()))
        rows.append(
            {
                "name": name,
                "versions": versions,
                "latest": versions[-1],
                "aliases": store.aliases(name),
                "broken_aliases": sorted(broken),
                "architecture": latest.architecture,
                "classes": latest.classes,
                "created_at": latest.created_at.isoformat(),
            }
        )
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    if as_json:
        emit_json({"models": rows, "problems": problems})
        return
    table = Table("name", "latest", "versions", "aliases", "architecture", "classes")
    for row in rows:
        aliases = ", ".join(f"{a}→{v}" for a, v in sorted(row["aliases"].items()))
        table.add_row(
            row["name"], str(row["latest"]), str(len(row["versions"])), aliases,
            row["architecture"], ",".join(row["classes"]),
        )  # fmt: skip
    Console().print(table if rows else "no models yet: `cxr train --publish` or `cxr models import`")


@models.command()
@click.argument("ref")
@json_option
@handle_errors
def show(ref: str, as_json: bool) -> None:
    """A model version's manifest (REF: NAME, NAME@VERSION, NAME@ALIAS or NAME@latest)."""
    store = _store()
    resolved = store.resolve(ref)
    manifest = store.manifest(resolved.name, resolved.version)
    from scheduler.retraining import decisions

    data = {
        "resolved": resolved.to_dict(),
        "aliases": store.aliases(resolved.name),
        "manifest": manifest.model_dump(mode="json"),
        "promotion_decisions": decisions(ready_settings(), resolved.name),
    }
    if as_json:
        emit_json(data)
        return
    click.echo(f"{manifest.ref}  ({manifest.architecture}, {manifest.output} over {manifest.classes})")
    click.echo(f"  file      {store.file_uri(resolved)}")
    click.echo(f"  sha256    {manifest.sha256}")
    click.echo(f"  input     {manifest.input.height}×{manifest.input.width}×{manifest.input.channels}, "
               f"{manifest.input.normalization}, {manifest.input.resize}, "
               f"contrast {manifest.input.contrast}")  # fmt: skip
    click.echo(f"  grad-cam  {manifest.gradcam_layer}")
    for name, point in manifest.operating_points.items():
        click.echo(
            f"  operating {name} >= {point.threshold:.4f} (validation sensitivity "
            f"{point.validation_sensitivity}, specificity {point.validation_specificity})"
        )
    if manifest.shift is not None:
        spec = manifest.shift
        click.echo(
            f"  shift     {spec.method} on {', '.join(spec.feature_layers)}, "
            f"flag beyond the {spec.threshold_percentile:g}th validation percentile"
        )
    else:
        click.echo("  shift     no reference: shift cannot be measured for this model")
    click.echo(f"  parent    {manifest.parent_version}")
    click.echo(f"  aliases   {data['aliases']}")
    for record in manifest.metrics:
        headline = {k: v for k, v in record.values.items() if isinstance(v, int | float)}
        click.echo(f"  metrics   {record.dataset} (n={record.n}): {headline}")
    click.echo(f"  use       {manifest.intended_use}")
    for d in data["promotion_decisions"]:
        verdict = "PROMOTED" if d["promoted"] else "kept current"
        click.echo(
            f"  gate      {d['created_at'][:19]} v{d['candidate_version']} vs v{d['incumbent_version']} "
            f"on {d['metric']}: {d['candidate_value']} vs {d['incumbent_value']} → {verdict} ({d['reason']})"
        )


@models.command()
@click.argument("ref")
@click.argument("version", required=False)
@click.option("--alias", required=True, help="Alias to move, e.g. production.")
@json_option
@handle_errors
def promote(ref: str, version: str | None, alias: str, as_json: bool) -> None:
    """Point ALIAS at REF's version: `cxr models promote NAME@VERSION --alias production`
    (`NAME VERSION` also works)."""
    name, version_number = _name_version(ref, version)
    _store().set_alias(name, alias, version_number)
    if as_json:
        emit_json({"name": name, "alias": alias, "version": version_number})
    else:
        click.echo(f"{name}@{alias} → {version_number}")


@models.command()
@click.argument("ref")
@json_option
@handle_errors
def pull(ref: str, as_json: bool) -> None:
    """Download a model into the local cache, verifying its sha256."""
    pulled = _store().pull(ref)
    data = {"ref": pulled.manifest.ref, "path": str(pulled.path), "sha256": pulled.manifest.sha256}
    if as_json:
        emit_json(data)
    else:
        click.echo(f"{data['ref']} → {data['path']} (sha256 verified)")


@models.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--classes", required=True, help="Class names in output order, comma-separated.")
@click.option("--image-size", type=int, required=True, help="Input height and width in pixels.")
@click.option(
    "--normalization",
    type=click.Choice(get_args(Normalization)),
    default="unit",
    show_default=True,
    help="Value range the model was trained on (unit = [0, 1], as the seed models).",
)
@contrast_option
@click.option("--alias", "aliases", multiple=True, help="Also point this alias at the new version.")
@json_option
@handle_errors
def import_(
    file: Path, name: str, classes: str, image_size: int, normalization: str, contrast: str,
    aliases: tuple[str, ...], as_json: bool,
) -> None:  # fmt: skip
    """Register a .keras or .h5 model trained elsewhere (loaded in safe mode first)."""
    from modelstore.importing import import_model

    manifest = import_model(
        _store(), file, name=name, classes=[c.strip() for c in classes.split(",") if c.strip()],
        image_size=image_size, normalization=normalization, contrast=contrast,  # type: ignore[arg-type]
        aliases=aliases,
    )  # fmt: skip
    if as_json:
        emit_json(
            {"ref": manifest.ref, "sha256": manifest.sha256, "manifest": manifest.model_dump(mode="json")}
        )
    else:
        click.echo(f"registered {manifest.ref} (sha256 {manifest.sha256[:12]}…)")


@models.command()
@click.argument("ref")
@click.argument("version", required=False)
@click.option("--data", "eval_data", required=True, help="The fixed evaluation set (folder, CSV, s3://).")
@click.option("--alias", default=None, help="Alias to move if not worse (default CXR_PROMOTION_ALIAS).")
@click.option("--metric", default=None, help="Metric to compare (default CXR_PROMOTION_METRIC).")
@click.option("--margin", type=float, default=None, help="Tolerance (default CXR_PROMOTION_MARGIN).")
@json_option
@handle_errors
def gate(
    ref: str, version: str | None, eval_data: str, alias: str | None, metric: str | None,
    margin: float | None, as_json: bool,
) -> None:  # fmt: skip
    """Promote REF (NAME@VERSION; `NAME VERSION` also works) to the alias only if it is not worse
    than the current holder."""
    from scheduler.retraining import promotion_gate

    name, number = _name_version(ref, version)
    result = promotion_gate(
        ready_settings(), name, number, eval_data=eval_data, alias=alias, metric=metric, margin=margin
    )
    if as_json:
        emit_json(result.as_dict())
    else:
        verdict = "promoted" if result.promoted else "not promoted"
        click.echo(f"{name}@{number} {verdict} to {result.alias}: {result.reason}")

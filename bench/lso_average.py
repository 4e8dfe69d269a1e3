"""Leave-source-out COVID AUC of published models and of their averaged probabilities.

    python -m bench.lso_average --data-dir DIR \\
        --models bench-mobilenetv2-3class-logistic-box-ds-s0@1,…-s1@1,…-s2@1 \\
        --out bench/results/lso-generalise-seed-average.json

Models trained on different patient splits with the same held-out sources never saw those
sources, so averaging their probabilities on the held-out films is a fair test of a seed
ensemble as a recipe. Films: every manifest row whose source (``entry_source``) is held out,
decoded as the worker decodes them. CIs: 1,000 bootstrap resamples of the films. Research use
only.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from cxr.core.imaging import decode_image
from cxr.core.settings import Settings
from modelstore import open_model_store
from modelstore.runtime import ModelRuntime
from training_jobs.datasets import entry_source
from training_jobs.evaluation import binary_auc, bootstrap_intervals

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-dev" / "manifest.csv"
BASE_COLUMNS = ("path", "label", "patient_id")


def held_out_rows(manifest: Path, sources: set[str]) -> list[dict[str, str]]:
    with manifest.open() as stream:
        rows = list(csv.DictReader(stream))
    meta = lambda row: {key: value for key, value in row.items() if key not in BASE_COLUMNS}  # noqa: E731
    return [row for row in rows if entry_source(row["patient_id"], meta(row)) in sources]


def covid_auc_with_ci(is_covid: np.ndarray, covid_probability: np.ndarray) -> dict[str, object]:
    interval = bootstrap_intervals(
        is_covid, covid_probability[:, None], lambda y, p: {"auc": binary_auc(y, p[:, 0])}
    )["auc"]
    return {"covid_auc": binary_auc(is_covid, covid_probability), "ci95": interval}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="CXR_DATA_DIR holding the models")
    parser.add_argument("--models", required=True, help="comma-separated NAME@VERSION")
    parser.add_argument("--data", type=Path, default=DEV, help="the manifest the models were trained on")
    parser.add_argument("--holdout-sources", default="actualmed,figure1")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = held_out_rows(args.data, {s.strip().lower() for s in args.holdout_sources.split(",")})
    store = open_model_store(Settings(data_dir=args.data_dir), catalogue=False)
    is_covid = np.array([row["label"] == "covid" for row in rows])
    result: dict[str, object] = {"holdout_sources": args.holdout_sources, "n": len(rows), "models": {}}
    covid_probabilities = []
    for ref in [m.strip() for m in args.models.split(",") if m.strip()]:
        runtime = ModelRuntime.load(store, ref, warm_up=False)
        films = [
            decode_image(
                (args.data.parent / row["path"]).read_bytes(), max_bytes=1 << 26,
                max_pixels=60_000_000, target_side=runtime.contract.decode_side,
            ).pixels
            for row in rows
        ]  # fmt: skip
        probabilities = runtime.predict_pixels(films)[:, runtime.classes.index("covid")]
        covid_probabilities.append(probabilities)
        result["models"][ref] = covid_auc_with_ci(is_covid, probabilities)  # type: ignore[index]
        print(ref, json.dumps(result["models"][ref]))  # type: ignore[index]
    result["average"] = covid_auc_with_ci(is_covid, np.mean(covid_probabilities, axis=0))
    print("average", json.dumps(result["average"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

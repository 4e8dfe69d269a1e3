"""Named training recipes: measured sets of training choices, so that the one that generalises
best can be asked for by name (``cxr train --recipe``, ``CXR_RETRAIN_RECIPE``) instead of by
eight flags that must all be right.

A recipe only sets ``TrainConfig`` fields; anything the caller states explicitly wins over it.
Each recipe says what it was measured to do, and where (docs/TRAINING.md); a recipe whose
figures change is edited here and there together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from training_jobs.deshortcut import Deshortcut

if TYPE_CHECKING:  # the CLI lists the recipes without importing TensorFlow
    from training_jobs.train import TrainConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    settings: dict[str, Any] = field(default_factory=dict)


#: The recipes, by name. ``generalise``: fine-tune the top 40 layers of an ImageNet base on the
#: lungs' bounding box, with de-shortcut copies of every training film and label smoothing.
#: Leave-source-out (Actualmed + Figure1 held out, MobileNetV2): COVID AUC 0.825 / 0.848 / 0.824
#: over three split seeds (mean 0.832), rerun 0.863 / 0.852 / 0.880 (mean 0.865), then twice more
#: 0.740 / 0.872 / 0.833 and 0.801 / 0.861 / 0.831 (13 runs: mean 0.835), against 0.773 for the
#: frozen baseline; internal COVID AUC 0.88-0.94; 4-10 min on 2 CPU cores. Restyled acquisition,
#: source-balanced weights and weight averaging on top of it did not help (docs/TRAINING.md). It needs the
#: lung segmenter in the store (``cxr train-segmenter --publish --alias production``) and ImageNet
#: weights.
RECIPES: dict[str, Recipe] = {
    "generalise": Recipe(
        name="generalise",
        summary="the best leave-source-out recipe measured (docs/TRAINING.md): ImageNet base, "
        "logistic head, top 40 layers fine-tuned for 10 epochs with label smoothing 0.1, lung box "
        "(lungs@production), one de-shortcut copy per training film",
        settings={
            "weights": "imagenet",
            "head": "logistic",
            "fine_tune_layers": 40,
            "fine_tune_epochs": 10,
            "label_smoothing": 0.1,
            "lung_crop": "box",
            "segmenter": "lungs@production",
            "deshortcut": Deshortcut(copies=1),
        },
    ),
}


def recipe_names() -> list[str]:
    return sorted(RECIPES)


def apply_recipe(config: TrainConfig, name: str, keep: Iterable[str] = ()) -> TrainConfig:
    """``config`` with recipe ``name``'s settings, except the fields named in ``keep`` (what
    the caller set explicitly). An unknown name raises ``KeyError`` listing the known ones."""
    if name not in RECIPES:
        raise KeyError(f"no training recipe {name!r} (known: {', '.join(recipe_names())})")
    kept = set(keep)
    changes = {key: value for key, value in RECIPES[name].settings.items() if key not in kept}
    return dataclasses.replace(config, **changes)

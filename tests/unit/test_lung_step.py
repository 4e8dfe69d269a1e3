"""The lung step of preprocessing: one code path, a bad mask falls back, the segmenter is a model
of the store (round trip in safe mode), and explanations map back through the crop."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from cxr.core.imaging import InputContract, decode_image, preprocess
from cxr.core.imaging.contract import ModelPin
from cxr.core.imaging.lungs import fallback_counts, lung_region, mask_problem
from cxr.core.imaging.preprocess import preprocess_gray_region
from cxr.explain.geometry import box_to_original, placement, to_original
from tests.unit.synthetic_cxr import write_folder_dataset
from training_jobs.datasets import load_dataset
from training_jobs.pipeline import make_dataset

PIN = ModelPin(name="lungs", version=1, sha256="0" * 64)


def two_lungs(size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[6:27, 4:12] = True
    mask[6:27, 20:28] = True
    return mask


class FixedMasker:
    """A stand-in segmenter: the same mask for every film."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask
        self.calls = 0

    def lung_mask(self, pixels: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.mask


def film(height: int = 90, width: int = 70, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width), dtype=np.float32)


def test_mask_problem_accepts_two_lungs_and_names_what_is_wrong():
    assert mask_problem(two_lungs()) is None
    assert "area" in mask_problem(np.zeros((32, 32), bool))
    one = np.zeros((32, 32), bool)
    one[6:27, 4:28] = True
    assert mask_problem(one) == "one component, not two lungs"
    lopsided = two_lungs()
    lopsided[:, 18:] = False
    lopsided[10:14, 20:22] = True
    assert mask_problem(lopsided) == "not two main components"
    shifted = np.roll(two_lungs(), 10, axis=0)
    shifted[:6] = False
    assert mask_problem(shifted).startswith("centroid off-centre")


def test_a_contract_without_lung_step_serialises_as_before():
    plain = InputContract(height=16, width=16)
    assert "lung" not in plain.model_dump_json()
    cropped = InputContract(height=16, width=16, lung_crop="mask", lung_model=PIN)
    assert InputContract.model_validate_json(cropped.model_dump_json()) == cropped


def test_a_lung_step_needs_its_segmenter():
    with pytest.raises(ValidationError):
        InputContract(height=16, width=16, lung_crop="box")
    contract = InputContract(height=16, width=16, lung_crop="box", lung_model=PIN)
    with pytest.raises(Exception, match="crops to the lungs"):
        preprocess(film(), contract)


def test_a_bad_mask_falls_back_to_the_whole_image_and_is_counted():
    pixels = film()
    plain = InputContract(height=24, width=24, channels=3, normalization="symmetric")
    for crop in ("box", "mask"):
        contract = plain.model_copy(update={"lung_crop": crop, "lung_model": PIN})
        before = fallback_counts().get("area", 0)
        _, region = preprocess_gray_region(pixels, contract, FixedMasker(np.zeros((32, 32), bool)))
        assert region is not None and region.fallback is not None and region.box == (0, 0, 90, 70)
        assert fallback_counts()["area"] == before + 1
        np.testing.assert_array_equal(preprocess(pixels, contract, FixedMasker(np.zeros((32, 32), bool))),
                                      preprocess(pixels, plain))  # fmt: skip


def test_box_crops_to_the_lungs_and_mask_blanks_outside():
    pixels = np.ones((64, 64), np.float32)
    region = lung_region(pixels, FixedMasker(two_lungs()), margin=0.0)
    assert region.fallback is None and region.box == (12, 8, 54, 56)  # rows 6-26, cols 4-27 of 32, × 2
    contract = InputContract(
        height=42, width=46, channels=1, lung_crop="mask", lung_margin=0.0, lung_model=PIN
    )
    gray = preprocess(pixels, contract, FixedMasker(two_lungs()))[..., 0]
    assert gray.min() == 0.0  # the gap between the lungs is blanked
    assert gray[:, :8].max() == 1.0 and gray[:, -8:].max() == 1.0


@pytest.mark.parametrize("crop", ["box", "mask"])
def test_training_batches_equal_preprocess_with_the_lung_step(tmp_path, local_settings, crop):
    root = write_folder_dataset(tmp_path / "data", per_class=2, size=45)
    contract = InputContract(
        height=24, width=28, channels=3, normalization="torch", lung_crop=crop, lung_model=PIN
    )
    masker = FixedMasker(two_lungs())
    data = load_dataset(str(root), ["covid", "normal"], contract, local_settings, lungs=masker)
    batch = next(iter(make_dataset(data.images, None, contract, output="sigmoid", batch_size=8)))
    files = sorted((root / "covid").glob("*.png")) + sorted((root / "normal").glob("*.png"))
    decoded = [decode_image(f.read_bytes(), max_bytes=10**7, max_pixels=10**7).pixels for f in files]
    expected = np.stack([preprocess(p, contract, masker) for p in decoded])
    np.testing.assert_allclose(np.asarray(batch), expected, rtol=1e-5, atol=1e-4)
    assert not np.allclose(expected, np.stack([preprocess(p, contract.model_copy(
        update={"lung_crop": "none", "lung_model": None})) for p in decoded]))  # fmt: skip


def test_explanations_map_back_through_the_crop():
    contract = InputContract(height=20, width=20, lung_crop="box", lung_model=PIN)
    where = placement(contract, 100, 80, crop=(10, 20, 60, 70))
    heat = np.ones((5, 5), np.float32)
    full = to_original(heat, where)
    assert full.shape == (100, 80)
    assert full[10:60, 20:70].min() == 1.0 and full[:10].max() == 0.0 and full[:, :20].max() == 0.0
    assert box_to_original((0, 0, 20, 20), where) == (20, 10, 70, 60)
    assert placement(contract, 100, 80, crop=(0, 0, 100, 80)) == placement(contract, 100, 80)


def test_segmenter_round_trips_through_the_store_and_the_runtime_holds_it(settings, tmp_path):
    import keras

    from modelstore import open_model_store
    from modelstore.manifest import SegmentationSpec
    from modelstore.runtime import ModelRuntime
    from modelstore.segmenter import LungSegmenter
    from tests import worker_support as support
    from training_jobs.lung_unet import build_lung_unet

    keras.utils.set_random_seed(1)
    unet = build_lung_unet(size=32, base_filters=2, depth=2)
    unet.save(tmp_path / "lungs.keras")
    seg_contract = InputContract(height=32, width=32, channels=1, contrast="clahe")
    store = open_model_store(settings)
    published = store.publish(
        "lungs", tmp_path / "lungs.keras", architecture="lung_unet", classes=["outside", "lung"],
        input_contract=seg_contract, output="sigmoid", segmentation=SegmentationSpec(threshold=0.5),
    )  # fmt: skip
    segmenter = LungSegmenter.load(store, "lungs@latest")  # pulled, sha256-checked, safe mode
    pixels = film(80, 64)
    x = preprocess(pixels, seg_contract)[None]
    np.testing.assert_allclose(segmenter.probabilities(x), np.asarray(unet(x))[..., 0], atol=1e-6)
    assert segmenter.pin.sha256 == published.sha256
    with pytest.raises(Exception, match="is a segmenter"):
        ModelRuntime.load(store, "lungs@latest")

    contract = InputContract(height=32, width=32, channels=1, lung_crop="box", lung_model=segmenter.pin)
    support.build_model(tmp_path / "clf.keras", contract=contract)
    store.publish("clf", tmp_path / "clf.keras", architecture="tiny_cnn", classes=support.CLASSES,
                  input_contract=contract, output="softmax", gradcam_layer="conv_last")  # fmt: skip
    runtime = ModelRuntime.load(store, "clf@latest")
    assert runtime.lungs is not None and runtime.lungs.ref == "lungs@1"
    np.testing.assert_array_equal(runtime.preprocess(pixels), preprocess(pixels, contract, segmenter))
    with pytest.raises(Exception, match="needs its segmenter"):
        ModelRuntime.from_pulled(store.pull("clf@latest"))
    # Explanations go through the same lung step and carry the crop back to the film.
    masker = FixedMasker(two_lungs())
    runtime.lungs = masker
    item = runtime.explainer("gradcam").explain([pixels])[0]
    expected = lung_region(pixels, masker, contract.lung_margin)
    assert item.placement.crop == expected.box and item.placement.original_height == 80


def test_shortcut_score_with_real_lungs_counts_energy_outside_the_mask():
    from cxr.explain.shortcut import outside_lungs_share

    lungs = two_lungs()
    heat = np.zeros((64, 64))
    heat[20:40, 10:20] = 1.0  # inside the left lung (rows 12-53, cols 8-23 at 64 px)
    assert outside_lungs_share(heat, lungs) == 0.0
    heat[0:5, 0:64] = 1.0  # a band along the top border: outside
    assert outside_lungs_share(heat, lungs) == pytest.approx(320 / 520)
    assert outside_lungs_share(np.zeros((8, 8)), lungs) is None


def test_deshortcut_copies_are_marked_seeded_and_keep_labels():
    from training_jobs.deshortcut import Deshortcut, augment_split

    images = np.full((4, 40, 40, 1), 0.5, np.float32)
    labels = np.array([0, 1, 0, 1])
    x, y = augment_split(images, labels, Deshortcut(copies=2), seed=3)
    assert x.shape == (12, 40, 40, 1) and list(y) == [0, 1, 0, 1] * 3
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_array_equal(x[:4], images)  # the originals stay
    assert all(np.any(x[i] != 0.5) for i in range(4, 12))  # every copy is marked
    np.testing.assert_array_equal(x, augment_split(images, labels, Deshortcut(copies=2), seed=3)[0])


def test_train_segmenter_end_to_end_on_synthetic_masks(settings, tmp_path):
    """The entry point: masks manifest → patient split → fit → Dice → published segmenter."""
    import csv

    from PIL import Image

    from modelstore import open_model_store
    from modelstore.segmenter import LungSegmenter
    from training_jobs.segmenter import SegmenterConfig, train_segmenter

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "masks").mkdir()
    with (tmp_path / "masks" / "manifest.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["image_path", "mask_path"])
        for i in range(8):
            mask = np.kron(two_lungs(), np.ones((2, 2), bool))  # 64 × 64
            film = np.clip(0.7 - 0.4 * mask + 0.1 * rng.random(mask.shape), 0, 1)
            Image.fromarray((film * 255).astype(np.uint8)).save(tmp_path / "img" / f"{i}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "masks" / f"{i}.png")
            writer.writerow([f"{i}.png", f"{i}.png"])
    config = SegmenterConfig(masks=str(tmp_path / "masks" / "manifest.csv"), images=str(tmp_path / "img"),
                             size=32, epochs=1, batch_size=4, publish=True)  # fmt: skip
    result = train_segmenter(config, settings)
    assert result.model_ref == "lungs@1" and sum(result.n.values()) == 8
    assert all(0.0 <= value <= 1.0 for value in result.dice.values())
    manifest = open_model_store(settings).manifest("lungs", 1)
    assert manifest.architecture == "lung_unet" and manifest.segmentation is not None
    assert manifest.segmentation.dice == result.dice["test"]
    assert LungSegmenter.load(open_model_store(settings), "lungs@1").contract.height == 32


def test_every_mask_problem_has_a_reason_code_and_the_worker_counts_them():
    """Each refusal message maps to a stable code (a metric label), and the worker's counter grows
    by what one chunk added."""
    from cxr.core.imaging.lungs import fallback_reason
    from modelstore import ResolvedModel
    from worker import metrics

    empty = np.zeros((96, 96), bool)
    one = empty.copy()
    one[20:70, 10:40] = True
    assert fallback_reason(mask_problem(empty)) == "area"
    assert fallback_reason(mask_problem(one)) == "one_component"
    assert fallback_reason(None) == "used"
    assert fallback_reason("something new") == "other"

    model = ResolvedModel("lungcount", 3, "0" * 64)
    metrics.count_lung_masks(model, {"used": 5, "area": 1}, {"used": 9, "area": 1, "centroid": 2})
    sample = metrics.LUNG_MASKS.labels("lungcount", "3", "used")._value.get()
    assert sample == 4
    assert metrics.LUNG_MASKS.labels("lungcount", "3", "centroid")._value.get() == 2
    assert metrics.LUNG_MASKS.labels("lungcount", "3", "area")._value.get() == 0


def test_segmenter_training_reads_masks_and_films_from_s3(s3_settings):
    """Masks and films in a bucket (the test S3 server), as training data is: the same pairs as
    from a folder, and a missing manifest is a clear error."""
    import csv
    import io

    from PIL import Image

    from cxr.core.errors import ConfigurationError
    from cxr.core.storage import open_store
    from training_jobs.segmenter import SegmenterConfig, load_pairs

    bucket = s3_settings.storage_url.split("/")[2]
    store = open_store(f"s3://{bucket}", s3_settings)
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["image_path", "mask_path"])
    for i in range(3):
        mask = np.kron(two_lungs(), np.ones((2, 2), bool))
        for key, array in ((f"films/{i}.png", 0.7 - 0.4 * mask), (f"masks/{i}.png", mask * 1.0)):
            buffer = io.BytesIO()
            Image.fromarray((array * 255).astype(np.uint8)).save(buffer, "PNG")
            store.put(key, buffer.getvalue())
        writer.writerow([f"{i}.png", f"{i}.png"])
    store.put("masks/manifest.csv", rows.getvalue().encode())
    store.put("films/manifest.csv", b"path,label,patient_id\n0.png,normal,p:0\n")
    root = f"s3://{bucket}"
    config = SegmenterConfig(masks=f"{root}/masks/manifest.csv", images=f"{root}/films", size=32)
    inputs, masks, ids = load_pairs(config, s3_settings)
    assert inputs.shape == (3, 32, 32, 1) and masks.shape == (3, 32, 32, 1)
    assert ids == ["p:0", "path:1.png", "path:2.png"]  # patient ids from the films' manifest
    assert 0.2 < masks.mean() < 0.6
    missing = SegmenterConfig(masks=f"s3://{bucket}/nowhere/manifest.csv", images=f"s3://{bucket}/films")
    with pytest.raises(ConfigurationError, match="no masks manifest"):
        load_pairs(missing, s3_settings)

"""Reduced decoding (``decode_image(..., target_side=...)``) of hospital-sized films: the fast
paths give nearly the pixels, and the same predictions, as decoding at full size; the film's own
size and the decode scale are reported; training decodes the way the worker does."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.corpus import FORMATS, dicom_bytes, synthetic_film, upscale
from cxr.core.errors import ImageError
from cxr.core.imaging import InputContract, decode_image, preprocess
from cxr.core.imaging.decode import DECODE_FACTORS, area_reduce, decode_factor
from cxr.core.imaging.preprocess import preprocess_gray
from tests.unit.synthetic_cxr import write_folder_dataset
from training_jobs.datasets import load_dataset

LIMITS = {"max_bytes": 1 << 27, "max_pixels": 60_000_000}
CONTRACT = InputContract(height=224, width=224, channels=3, normalization="symmetric")
FILM = (2500, 2048)
SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "cxr-sample"


@pytest.fixture(scope="module")
def film() -> np.ndarray:
    return synthetic_film(np.random.default_rng(7), *FILM)


def both(data: bytes, contract: InputContract = CONTRACT):
    slow = decode_image(data, **LIMITS)
    fast = decode_image(data, target_side=contract.decode_side, **LIMITS)
    return slow, fast


def test_decode_factor_is_the_largest_that_keeps_the_shorter_side():
    assert decode_factor(2500, 2048, 448) == 4  # 2048 / 4 = 512 >= 448; / 5 = 409 < 448
    assert decode_factor(2500, 2048, 448, (1, 2, 4, 8)) == 4
    assert decode_factor(3000, 2400, 448, (1, 2, 4, 8)) == 4  # 5 is not a DCT scale
    assert decode_factor(3000, 2400, 448) == 5
    assert decode_factor(3000, 2400, 448, DECODE_FACTORS) == 4  # the rule every format uses
    assert decode_factor(400, 300, 448) == decode_factor(2500, 2048, None) == 1
    assert CONTRACT.decode_side == 448
    assert InputContract(height=224, width=320).decode_side == 640


def test_area_reduce_is_a_block_mean_in_the_arrays_own_dtype():
    values = np.arange(7 * 9, dtype=np.uint16).reshape(7, 9) * 50
    reduced = area_reduce(values, 3)
    assert reduced.shape == (2, 3) and reduced.dtype == np.uint16
    expected = values[:6, :9].reshape(2, 3, 3, 3).mean(axis=(1, 3))
    assert np.abs(reduced.astype(float) - expected).max() <= 0.5
    wide = np.arange(36, dtype=np.int32).reshape(6, 6) * 100_000  # a dtype OpenCV cannot take
    assert np.array_equal(area_reduce(wide, 2), np.rint(wide.reshape(3, 2, 3, 2).mean(axis=(1, 3))))


@pytest.mark.parametrize("factor", [2, 4, 8, 6])
def test_area_reduce_halvings_stay_within_half_a_level_per_pass(factor):
    """Twos are taken as 2×2 halvings (OpenCV's vectorised case), each rounded."""
    values = np.random.default_rng(factor).integers(0, 4096, (203, 181)).astype(np.uint16)
    reduced = area_reduce(values, factor)
    rows, cols = 203 // factor, 181 // factor
    exact = values[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor).mean(axis=(1, 3))
    passes = (factor & -factor).bit_length() - 1 + (factor & (factor - 1) != 0)
    assert reduced.shape == (rows, cols)
    assert np.abs(reduced - exact).max() <= 0.5 * passes + 1e-9


def test_a_3000_pixel_film_is_decoded_at_a_power_of_two(film):
    big = upscale(film, 3000, 2400, np.random.default_rng(3))
    for name in ("dicom12", "png16", "jpeg8"):
        fast = decode_image(FORMATS[name][0](big), target_side=CONTRACT.decode_side, **LIMITS)
        assert fast.scale == 4 and fast.pixels.shape == (750, 600), name


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_fast_and_slow_paths_agree(film, name):
    encode, _ = FORMATS[name]
    slow, fast = both(encode(film))
    assert fast.pixels.shape == (625, 512) and fast.scale == 4.0
    assert (fast.height, fast.width) == (slow.height, slow.width) == FILM
    assert fast.pixels.dtype == np.float32 and fast.pixels.min() >= 0 and fast.pixels.max() <= 1
    difference = np.abs(preprocess(slow.pixels, CONTRACT) - preprocess(fast.pixels, CONTRACT))
    # symmetric normalization: the input spans [-1, 1], twice the [0, 1] pixels' range
    assert difference.max() < 0.04, difference.max()
    assert difference.mean() < 0.003, difference.mean()


def test_a_dicoms_stretch_uses_the_full_films_extremes(film):
    """Block means never reach the film's noise extremes; stretching by the reduced film's own
    range would brighten it (a mean difference of 0.12 before this was fixed)."""
    slow, fast = both(dicom_bytes(film))
    reduced_slow = np.asarray(Image.fromarray(slow.pixels, "F").resize((512, 625), Image.Resampling.BOX))
    assert abs(float(reduced_slow.mean()) - float(fast.pixels.mean())) < 0.002


def test_small_films_are_decoded_as_they_are():
    small = synthetic_film(np.random.default_rng(1), 400, 300)
    for encode, _ in FORMATS.values():
        slow, fast = both(encode(small))
        assert np.array_equal(slow.pixels, fast.pixels) and fast.scale == 1.0


def test_exif_rotated_jpeg_reports_the_turned_film_size(film):
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    Image.fromarray(np.round(film * 255).astype(np.uint8), "L").save(buffer, "JPEG", quality=90, exif=exif)
    slow, fast = both(buffer.getvalue())
    assert slow.pixels.shape == (2048, 2500) and fast.pixels.shape == (512, 625)
    assert (fast.height, fast.width) == (2048, 2500) and fast.scale == 4.0


def _sample_films(count: int) -> list[np.ndarray]:
    with (SAMPLES / "manifest.csv").open() as stream:
        rows = list(csv.DictReader(stream))[:: max(1, 41 // count)][:count]
    rng = np.random.default_rng(3)
    small = [decode_image((SAMPLES / row["path"]).read_bytes(), **LIMITS).pixels for row in rows]
    return [upscale(pixels, 2400, 2000, rng) for pixels in small]


def _position_dependent_model():
    """A small CNN whose output depends on where things are (no global pooling), with a
    sharpened last layer so that films move its probabilities far apart."""
    import keras

    keras.utils.set_random_seed(0)
    contract = InputContract(height=96, width=96, channels=1, normalization="unit")
    model = keras.Sequential(
        [
            keras.Input(contract.shape),
            keras.layers.Conv2D(8, 5, strides=2, activation="relu"),
            keras.layers.MaxPooling2D(4),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 8, bias])
    return model, contract


@pytest.mark.slow
def test_a_models_probabilities_do_not_move():
    """A position-dependent model scores the sample films at full resolution in every format,
    decoded both ways."""
    model, contract = _position_dependent_model()
    films = _sample_films(4)
    for name, (encode, _) in sorted(FORMATS.items()):
        slow_inputs, fast_inputs = [], []
        for film in films:
            slow, fast = both(encode(film), contract)
            assert fast.scale > 1
            slow_inputs.append(preprocess(slow.pixels, contract))
            fast_inputs.append(preprocess(fast.pixels, contract))
        p_slow = model.predict(np.stack(slow_inputs), verbose=0)
        p_fast = model.predict(np.stack(fast_inputs), verbose=0)
        assert np.abs(p_slow - p_fast).max() <= 0.02, (name, np.abs(p_slow - p_fast).max())
        assert np.ptp(p_slow, axis=0).max() > 0.2  # the model does tell these films apart


def test_training_decodes_as_the_worker_does(tmp_path, local_settings):
    """A training set of hospital-sized films holds exactly what the worker's decode (reduced
    by the contract's rule) and ``preprocess_gray`` give, not the full-size decode's pixels."""
    root = write_folder_dataset(tmp_path / "data", per_class=1, size=40)
    rng = np.random.default_rng(5)
    files = sorted(root.rglob("*.png"))
    for path in files:
        big = synthetic_film(rng, 1200, 1000)
        path.write_bytes(FORMATS["png16"][0](big))
    contract = InputContract(height=64, width=64, channels=1, normalization="unit")
    data = load_dataset(str(root), ["covid", "normal"], contract, local_settings)
    worker = [
        preprocess_gray(
            decode_image(p.read_bytes(), target_side=contract.decode_side, **LIMITS).pixels, contract
        )
        for p in files
    ]
    full = [preprocess_gray(decode_image(p.read_bytes(), **LIMITS).pixels, contract) for p in files]
    assert len(data) == len(files)
    for image in data.images:
        assert any(np.array_equal(image, expected) for expected in worker)
        assert not any(np.array_equal(image, expected) for expected in full)


def test_a_dicom_with_bits_above_bits_stored_is_decoded_by_pydicom(film):
    """Stored values are 12 bits; a film carrying something in the upper 4 (an old overlay) is
    read by pydicom, which masks those bits, not viewed raw: both paths still agree."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film)))
    stored = np.frombuffer(ds.PixelData, "<u2").copy()
    stored[::7] |= 1 << 14
    ds.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    slow, fast = both(buffer.getvalue())
    clean_slow, clean_fast = both(dicom_bytes(film))
    assert np.array_equal(slow.pixels, clean_slow.pixels) and np.array_equal(fast.pixels, clean_fast.pixels)


@pytest.mark.parametrize("mode", ["F", "I"])
def test_32_bit_tiffs_keep_the_full_films_range(mode):
    """Float and 32-bit integer TIFFs are stretched by the full film's extremes (F) or scaled by
    its peak (I) whether reduced or not: the reduced film is the full one's block means."""
    film = synthetic_film(np.random.default_rng(2), 1200, 1000)
    values = film * 3.0e5 - 1.0e3 if mode == "F" else np.round(film * 3.0e5).astype(np.int32)
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.float32 if mode == "F" else np.int32), mode).save(buffer, "TIFF")
    contract = InputContract(height=64, width=64, channels=1)
    slow, fast = both(buffer.getvalue(), contract)
    assert fast.scale == 4.0 and fast.bit_depth == slow.bit_depth == 32  # 1000 / 64 / 2 = 7.8
    reduced_slow = area_reduce(slow.pixels, 4)
    assert np.abs(reduced_slow - fast.pixels).max() < 1e-3


def test_the_full_resolution_corpus_decodes_at_its_stated_size(tmp_path):
    from bench.corpus import write_corpus

    manifest = write_corpus(tmp_path, 1, formats=["jpeg8", "dicom12-voilut"])
    with manifest.open() as stream:
        rows = list(csv.DictReader(stream))
    assert [row["format"] for row in rows] == ["jpeg8", "dicom12-voilut"]
    for row in rows:
        decoded = decode_image((tmp_path / row["path"]).read_bytes(), target_side=448, **LIMITS)
        assert (decoded.height, decoded.width) == (int(row["height"]), int(row["width"])) == FILM
        assert decoded.scale == 4 and decoded.pixels.std() > 0.05  # a film, not a flat field


def test_every_fuzz_seed_decodes_reduced_to_pixels_or_a_reason():
    """The reduced paths keep the decoder's promise on the fuzzing seeds (every format, every
    DICOM variant): valid pixels or an ``ImageError``, nothing else."""
    from cxr.core.errors import ImageError
    from tests.fuzz_corpus import seeds

    reduced = 0
    for name, data in seeds().items():
        try:
            decoded = decode_image(data, target_side=16, **LIMITS)
        except ImageError:
            continue
        pixels = decoded.pixels
        assert pixels.dtype == np.float32 and np.isfinite(pixels).all(), name
        assert pixels.min() >= 0 and pixels.max() <= 1, name
        reduced += decoded.scale > 1
    assert reduced >= 5


def _j2k_dicom(film: np.ndarray) -> bytes:
    from pydicom.uid import JPEG2000Lossless

    pytest.importorskip("openjpeg")  # pydicom's JPEG 2000 encoder (the cxr[dicom] extra)
    return dicom_bytes(film, transfer_syntax=JPEG2000Lossless)


@pytest.mark.slow
def test_a_jpeg_2000_film_is_decoded_at_a_reduced_wavelet_level():
    """OpenJPEG stops at the 1/8 level (the film's LL band): the same size and scale as the
    other reduced paths. The wavelet's low-pass is not the area mean (it is centred 1.5 film
    pixels off the block's centre and differs most at sharp edges), so the pixels differ more
    than on the other paths; the sharp position-dependent model's probabilities still move by
    at most 0.02 on the sample films, as for every format."""
    from cxr.core.imaging.jpeg2000 import codestream_precision

    films = _sample_films(3)
    model, contract = _position_dependent_model()
    slow_inputs, fast_inputs = [], []
    for film in films:
        data = _j2k_dicom(film)
        slow, fast = both(data, contract)
        assert fast.pixels.shape == (300, 250) and fast.scale == 8 and slow.scale == 1  # 192-px side
        slow_inputs.append(preprocess(slow.pixels, contract))
        fast_inputs.append(preprocess(fast.pixels, contract))
        difference = np.abs(slow_inputs[-1] - fast_inputs[-1])
        assert difference.mean() < 0.02, difference.mean()
    p_slow = model.predict(np.stack(slow_inputs), verbose=0)
    p_fast = model.predict(np.stack(fast_inputs), verbose=0)
    assert np.abs(p_slow - p_fast).max() <= 0.02, np.abs(p_slow - p_fast).max()
    import pydicom
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(io.BytesIO(data))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert codestream_precision(frame) == (2000, 2400, 12, False)


def test_a_jpeg_2000_codestream_that_contradicts_its_header_is_refused(film):
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    from cxr.core.imaging.jpeg2000 import decode_reduced

    ds = pydicom.dcmread(io.BytesIO(_j2k_dicom(film)))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    with pytest.raises(ImageError, match="codestream holds 2048×2500"):
        decode_reduced(frame, 2400, 2048, 4)
    assert decode_reduced(frame, 2500, 2048, 3) is None  # not a power of two: full decode
    assert decode_reduced(b"\x00" * 64, 2500, 2048, 4) is None  # not a raw codestream
    broken = frame[: len(frame) // 3]  # the header survives, the code blocks do not
    ds.PixelData = encapsulate([broken])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    try:
        decoded = decode_image(buffer.getvalue(), target_side=CONTRACT.decode_side, **LIMITS)
    except ImageError as exc:
        assert "JPEG 2000" in str(exc) or "DICOM" in str(exc)
    else:  # OpenJPEG may decode what it has (the rest is zero): still valid pixels
        assert np.isfinite(decoded.pixels).all() and decoded.pixels.shape == (625, 512)


def test_a_truncated_uncompressed_dicom_is_refused_on_the_reduced_path(film):
    data = dicom_bytes(film)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) - 1000], target_side=CONTRACT.decode_side, **LIMITS)


def test_a_jpeg_ls_film_agrees_reduced_and_full(film):
    """JPEG-LS is decoded whole (CharLS, where installed) and then reduced like an uncompressed
    film: the same tolerance as every area-reduced path."""
    from pydicom.uid import JPEGLSLossless

    pytest.importorskip("jpeg_ls")
    slow, fast = both(dicom_bytes(film, transfer_syntax=JPEGLSLossless))
    assert fast.pixels.shape == (625, 512) and fast.scale == 4
    difference = np.abs(preprocess(slow.pixels, CONTRACT) - preprocess(fast.pixels, CONTRACT))
    assert difference.max() < 0.04 and difference.mean() < 0.003, (difference.max(), difference.mean())

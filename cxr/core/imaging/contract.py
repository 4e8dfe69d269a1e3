"""A model's input contract: what every pixel handed to it must look like.

It travels inside the model's manifest, and both training and inference preprocess from it, so
a model can never be fed differently from how it was trained.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

#: How pixel values in [0, 1] map onto the model's expected input range.
#:  unit        [0, 1]                      (simple_cnn, most from-scratch models)
#:  symmetric   [-1, 1]                     (MobileNetV2, InceptionV3, Xception)
#:  caffe       x*255 - ImageNet BGR means   (VGG16/19, ResNet50 from keras.applications)
#:  torch       (x - ImageNet mean) / std    (DenseNet121)
#:  raw255      [0, 255]                    (EfficientNet, which rescales inside the model)
Normalization = Literal["unit", "symmetric", "caffe", "torch", "raw255"]

#: A contrast step after resizing: none, or CLAHE (see ``preprocess.clahe``).
Contrast = Literal["none", "clahe"]


#: Fields older manifests carry that no longer exist: accepted on read, dropped.
RETIRED_FIELDS = frozenset({"grayscale_to_channels", "dtype"})


#: The lung step (``cxr.core.imaging.lungs``): none; box: crop to the lungs' bounding box grown by
#: ``lung_margin``; mask: that crop with everything outside the lungs set to black.
LungCrop = Literal["none", "box", "mask"]


class ModelPin(BaseModel):
    """An exact model version another model depends on (the lung segmenter of a classifier):
    name, version and the model file's sha256, checked when it is pulled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class InputContract(BaseModel):
    """Shape and value range of the model's input, and how an X-ray is brought to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    channels: Literal[1, 3] = Field(
        default=3, description="1 for grayscale models; 3 replicates the gray channel."
    )
    normalization: Normalization = "unit"
    resize: Literal["stretch", "pad"] = Field(
        default="stretch",
        description="stretch: resize to height×width ignoring aspect (as the seed models were "
        "trained); pad: keep aspect and pad with black.",
    )
    contrast: Contrast = Field(
        default="none",
        description="clahe: contrast-limited adaptive histogram equalisation of the resized gray "
        "image (8×8 tiles, clip limit 2), which evens out exposure between scanners and sites.",
    )

    lung_crop: LungCrop = Field(
        default="none",
        description="box: crop to the lungs' bounding box (found by ``lung_model``) before resizing; "
        "mask: also blank what lies outside the lungs. A bad mask falls back to the whole image.",
    )
    lung_margin: float = Field(
        default=0.05, ge=0, le=0.5, description="Margin around the lungs' box, as a share of the film."
    )
    lung_model: ModelPin | None = Field(
        default=None, description="The segmenter the lung step runs: it decides the pixels, so it is pinned."
    )

    @model_validator(mode="after")
    def _lung_step_names_its_segmenter(self) -> InputContract:
        if self.lung_crop != "none" and self.lung_model is None:
            raise ValueError(f"lung_crop={self.lung_crop!r} needs the segmenter's lung_model")
        return self

    @model_serializer(mode="wrap")
    def _omit_absent_lung_step(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A contract without a lung step serialises exactly as before the step existed, so
        workers that predate it (their contract forbids unknown fields) still read manifests
        of models that do not use it."""
        data = handler(self)
        if self.lung_crop == "none" and self.lung_model is None:
            for key in ("lung_crop", "lung_margin", "lung_model"):
                data.pop(key, None)
        return data

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_fields(cls, data: Any) -> Any:
        """Manifests published before these fields were retired still load (they only ever
        held their one allowed value: gray replicated to the channels, float32)."""
        if isinstance(data, dict) and (RETIRED_FIELDS & data.keys()):
            data = {key: value for key, value in data.items() if key not in RETIRED_FIELDS}
        return data

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    #: How many times the input's longer side a film's shorter side stays when it is decoded
    #: reduced: resizing then still shrinks (antialiased) by at least this much, whatever the
    #: format and the lung step's crop, so a reduced decode gives nearly the full-size pixels.
    DECODE_MARGIN: ClassVar[int] = 2

    @property
    def decode_side(self) -> int:
        """The decode-scale rule: a film is decoded reduced by the largest factor its format
        allows (JPEG 1, 2, 4, 8 in the DCT domain; DICOM, PNG, TIFF 1, 2, 4, 8, 16, an area mean
        of stored integers) that keeps its shorter side at least this many pixels
        (``decode.decode_factor``). ``DecodedImage.scale`` records the factor: explanations located
        on the decoded pixels map back onto the original film by multiplying by it."""
        return self.DECODE_MARGIN * max(self.height, self.width)

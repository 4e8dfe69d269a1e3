"""Image decoding (bytes → gray [0, 1]) and preprocessing (→ model input), shared by training
and inference."""

from cxr.core.imaging.contract import InputContract, Normalization
from cxr.core.imaging.decode import DecodedImage, decode_image
from cxr.core.imaging.preprocess import preprocess

__all__ = ["DecodedImage", "InputContract", "Normalization", "decode_image", "preprocess"]

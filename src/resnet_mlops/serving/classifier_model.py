"""The registered model: encoded images in, class probabilities out.

MLflow logs this file as the model's code ("models from code") and runs it when the model is
loaded, so it must stay self-contained: it imports NumPy, pandas, Pillow, PyTorch and MLflow,
never ``resnet_mlops``. The network is a ``torch.export`` program (``network.pt2``) and the
preprocessing a JSON description (``preprocessing.json``), both model artifacts.

Input: a DataFrame with one column ``image`` holding each image's encoded file bytes (JPEG, PNG
or anything Pillow reads; any size, colour or grayscale), or the same bytes base64-encoded (as
``str`` or ``bytes``). Over HTTP (``mlflow models serve``) send base64 in any of the forms
MLflow's scoring server takes::

    {"dataframe_split": {"columns": ["image"], "data": [["<base64 of a .jpg file>"]]}}
    {"dataframe_records": [{"image": "<base64>"}]}
    {"inputs": {"image": ["<base64>", ...]}}      {"inputs": ["<base64>", ...]}
    {"instances": [{"image": "<base64>"}]}        {"instances": ["<base64>", ...]}
    text/csv with a header line ``image`` and one base64 string per line

MLflow (3.x) base64-decodes the binary column only for ``dataframe_split``/``records``; for
``inputs``/``instances`` it hands the base64 text over as bytes and for CSV as ``str``, so a
cell made only of base64 characters is decoded here. Encoded image files are never pure base64
(PNG, JPEG, GIF, BMP and PPM headers hold bytes outside its alphabet), so nothing is decoded twice.

A row that is not an image is refused with one line naming the row and the reason, which
``mlflow models serve`` returns as the message of a 400 (see :class:`ImageInputError`).

Images over ``MAX_PIXELS`` pixels (Pillow's own decompression-bomb threshold, 0.25 GiB as RGB,
and the default of the prepare stage's ``max_pixels``, so any image the data stages accept is
accepted here) are refused from their header before any pixel is decoded, with one error
naming the row: a 2.6 MB PNG can declare 30000x30000 pixels. The cap is part of this file, so
it travels with the model; a ``max_pixels`` entry in ``preprocessing.json`` overrides it.

Output: a DataFrame with one float column per class (the softmax probabilities), one row per
image, in the order of the input.

Preprocessing is the evaluation transform of training: an image already at the network's size
(CIFAR-10's 32x32) is used as it is; otherwise the shorter side is resized to ``resize_shorter``
(bilinear, antialiased, the longer side rounded half up) and the centre ``crop`` x ``crop`` is
taken; then ``(pixel - shift) * scale`` per pixel, where ``shift`` is the training set's mean
image or per-channel mean and ``scale`` is 1 / the per-channel standard deviation (0..255 units).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from collections.abc import Sequence
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image, UnidentifiedImageError

INPUT_COLUMN = "image"
FORMAT = "resnet-mlops/preprocessing/1"
MAX_PIXELS = 89_478_485


class ImageInputError(MlflowException, ValueError):
    """A row's image cannot be used; the message is one line naming the row and the reason.

    An :class:`MlflowException` with a 400 code, because MLflow's scoring server (3.x,
    ``scoring_server.invocations``) answers any other exception from ``predict`` with a generic
    "unexpected error" and a stack trace. The server also rewrites an ``MlflowException``'s
    message to ``Failed to predict data '<the whole input>'. Error: ...``, many lines of base64;
    the message here ignores that rewrite so the client reads the one line alone. A
    ``ValueError`` too, for callers of ``predict`` in Python.
    """

    def __init__(self, message: str) -> None:
        self._line = message
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:  # type: ignore[override]
        """The one line given; assignments (the scoring server's rewrite) are ignored."""
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        pass


def image_bytes(cell: Any) -> bytes:
    """The encoded image in one input cell: raw file bytes, or base64 of them (``str``/``bytes``).

    Raises:
        TypeError: neither bytes nor text.
    """
    if isinstance(cell, str):
        cell = cell.encode("ascii", "replace")  # non-ASCII text is not base64; "?" keeps it so
    if not isinstance(cell, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected encoded image bytes or base64 text, got {type(cell).__name__}")
    data = bytes(cell)
    try:
        # validate=True: any byte outside the base64 alphabet means raw file bytes.
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return data


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image to ``(H, W, 3)`` uint8 RGB (grayscale, CMYK, palette: converted).

    The size is read from the header first: an image over ``max_pixels`` is never decoded.
    Pillow's process-wide limit is left alone (a server may decode in several threads); above
    it Pillow refuses by itself, which is reported the same way.

    Raises:
        ValueError: not an image, too large, or truncated or corrupt; the message says which.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(
                    f"image too large: {width}x{height} pixels, over the cap of {max_pixels}"
                )
            return np.array(image.convert("RGB"))  # a writable copy, for torch.from_numpy
    except UnidentifiedImageError:
        raise ValueError("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Raised by Image.open itself, before the size can be read: its message has the count.
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{found[1]} pixels" if found else str(error)
        raise ValueError(f"image too large: {size}, over the cap of {max_pixels}") from None
    except (OSError, SyntaxError) as error:
        raise ValueError(f"truncated or corrupt image ({error})") from None


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def resize_and_crop(image: np.ndarray, resize_shorter: int, crop: int) -> np.ndarray:
    """The evaluation geometry: shorter side to ``resize_shorter``, then the centre crop.

    An image that is already ``crop`` x ``crop`` is returned unchanged (CIFAR-10). Sizes and
    offsets are rounded half up, as the training pipelines do (DALI's convention).
    """
    height, width = image.shape[:2]
    if (height, width) == (crop, crop):
        return image
    ratio = resize_shorter / min(height, width)
    size = (
        max(resize_shorter, _round_half_up(height * ratio)),
        max(resize_shorter, _round_half_up(width * ratio)),
    )
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    if size != (height, width):
        # uint8 in, uint8 out: the same kernel torchvision's resize uses on uint8 tensors.
        tensor = F.interpolate(tensor, size=size, mode="bilinear", antialias=True)
    top = _round_half_up(0.5 * (size[0] - crop))
    left = _round_half_up(0.5 * (size[1] - crop))
    return tensor[0, :, top : top + crop, left : left + crop].permute(1, 2, 0).numpy()


class ImageScorer:
    """A network and its preprocessing: uint8 RGB images in, probabilities out.

    Args:
        network: Maps a float32 ``(N, 3, crop, crop)`` batch to ``(N, classes)`` logits.
        preprocessing: The description written beside the network (``preprocessing.json``).
    """

    def __init__(self, network: Any, preprocessing: dict[str, Any]) -> None:
        if preprocessing.get("format") != FORMAT:
            raise ValueError(f"unknown preprocessing format {preprocessing.get('format')!r}")
        self.network = network
        self.classes: list[str] = list(preprocessing["classes"])
        self.resize_shorter = int(preprocessing["resize_shorter"])
        self.crop = int(preprocessing["crop"])
        self.max_pixels = int(preprocessing.get("max_pixels", MAX_PIXELS))
        side = (self.crop, self.crop, 3)
        shift = preprocessing.get("mean_image") or preprocessing["mean"]
        # Full-size float32 arrays, as the training pipelines use: the same float32 expression.
        self.shift = torch.from_numpy(np.broadcast_to(np.asarray(shift, np.float32), side).copy())
        scale = np.float32(1.0) / np.asarray(preprocessing["std"], np.float32)
        self.scale = torch.from_numpy(np.broadcast_to(scale, side).copy())

    def inputs(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """The network input for decoded images: float32 ``(N, 3, crop, crop)``."""
        batch = np.stack([resize_and_crop(i, self.resize_shorter, self.crop) for i in images])
        return ((torch.from_numpy(batch) - self.shift) * self.scale).permute(0, 3, 1, 2)

    @torch.inference_mode()
    def probabilities(self, images: Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """Softmax probabilities, float64 ``(N, classes)``, for decoded uint8 RGB images."""
        out = np.zeros((len(images), len(self.classes)), np.float64)
        for start in range(0, len(images), batch_size):
            logits = self.network(self.inputs(images[start : start + batch_size]))
            out[start : start + batch_size] = torch.softmax(logits.float(), 1).double().numpy()
        return out


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """The pyfunc: encoded images in the ``image`` column, a probability column per class out."""

    def load_context(self, context: Any) -> None:
        """Load ``network.pt2`` and ``preprocessing.json`` from the model's artifacts."""
        with open(context.artifacts["preprocessing"], encoding="utf-8") as f:
            preprocessing = json.load(f)
        network = torch.export.load(context.artifacts["network"]).module()
        self.scorer = ImageScorer(network, preprocessing)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Class probabilities for each row's encoded image.

        Raises:
            ImageInputError: no ``image`` column, or a row that is not a decodable image (named).
        """
        if not isinstance(model_input, pd.DataFrame) or INPUT_COLUMN not in model_input:
            raise ImageInputError(
                f"expected a DataFrame with an {INPUT_COLUMN!r} column of image bytes or base64"
            )
        images = []
        for row, cell in enumerate(model_input[INPUT_COLUMN]):
            try:
                images.append(decode_image(image_bytes(cell), self.scorer.max_pixels))
            except (ValueError, TypeError) as error:
                raise ImageInputError(f"row {row}: {error}") from None
        probabilities = self.scorer.probabilities(images)
        return pd.DataFrame(probabilities, columns=self.scorer.classes)


# MLflow runs this file under a module name of its own when it loads the model. The package
# imports it as resnet_mlops.serving.classifier_model for the preprocessing alone, and must not
# declare a model then.
if not __name__.startswith("resnet_mlops."):
    mlflow.models.set_model(ImageClassifier())

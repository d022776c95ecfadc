"""The DALI pipeline definitions: one per dataset and mode, placed on the CPU or the GPU.

Placement is the only difference between the CPU and GPU variants: the same operators with the
same arguments, on ``device="gpu"`` (JPEG decoding on ``"mixed"``: nvJPEG and the hardware
decoder) or on ``device="cpu"`` in DALI's CPU-only mode (``device_id=None``, no CUDA needed).
Samples come in through ``fn.external_source`` from a callable that yields whole batches in the
order :mod:`resnet_mlops.data.loaders.epochs` decides, so DALI never reshuffles or pads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali.pipeline import DataNode, Pipeline

from resnet_mlops.data.loaders.recipe import (
    CIFAR_PAD,
    CIFAR_SIDE,
    CROP,
    EVAL_SHORTER,
    FIVE_CROPS,
    RRC_AREA,
    RRC_RATIO,
    SCALE_SHORTER,
    ImagenetMode,
)

Placement = Literal["cpu", "gpu"]
Layout = Literal["CHW", "HWC"]

# Set once a pipeline is built: from then on this process holds DALI threads, and the torch
# fallback must not fork its workers from it (see ``torch_loader.worker_context``).
PIPELINES_BUILT = False


def cifar10_graph(
    source: Callable[[], Any],
    *,
    placement: Placement,
    train: bool,
    shift: np.ndarray,
    scale: np.ndarray,
    layout: Layout,
) -> tuple[DataNode, DataNode]:
    """CIFAR-10: normalise, then (train) zero-pad 4, random 32x32 crop, random horizontal flip.

    Normalising before padding makes the padding zero in the normalised space, i.e. the mean
    colour, as in fb.resnet.torch's CIFAR recipe; the paper does not say which.
    """
    images, labels = fn.external_source(
        source=source,
        num_outputs=2,
        batch=True,
        device=placement,
        layout=["HWC", ""],
        dtype=[types.UINT8, types.INT64],
    )
    shift_node = types.Constant(shift, device=placement)
    scale_node = types.Constant(scale, device=placement)
    images = (images - shift_node) * scale_node
    mirror: DataNode | int = 0
    if train:
        # Offsets 0..8 of the 40x40 padded image, i.e. -4..4 on the original: 81 positions.
        start = fn.random.choice(2 * CIFAR_PAD + 1, shape=2) - CIFAR_PAD
        images = fn.slice(
            images,
            start=start,
            shape=(CIFAR_SIDE, CIFAR_SIDE),
            axis_names="HW",
            out_of_bounds_policy="pad",
            fill_values=0.0,
        )
        mirror = fn.random.coin_flip(probability=0.5)
    images = fn.crop_mirror_normalize(
        images, mirror=mirror, dtype=types.FLOAT, output_layout=layout
    )
    return images, labels


def imagenet_graph(
    source: Callable[[], Any],
    *,
    placement: Placement,
    mode: ImagenetMode,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    layout: Layout,
) -> tuple[DataNode, DataNode]:
    """ImageNet from encoded JPEGs: decode, resize and crop as ``mode`` says, normalise.

    Modes: ``random_resized_crop`` (decode only a random region: scale 0.08-1, ratio 3/4-4/3,
    resized to 224, random flip); ``scale`` (paper section 3.4: shorter side random in
    [256, 480], random 224 crop, random flip); ``center_crop`` (shorter side 256, centre 224);
    ``ten_crop`` (shorter side 256, four corners and centre, then the same five mirrored:
    each sample is (10, ...)).
    """
    jpegs, labels = fn.external_source(
        source=source, num_outputs=2, batch=True, device="cpu", dtype=[types.UINT8, types.INT64]
    )
    decoder = "mixed" if placement == "gpu" else "cpu"
    common = {"dtype": types.FLOAT, "output_layout": layout, "mean": list(mean), "std": list(std)}
    if mode == "random_resized_crop":
        images = fn.decoders.image_random_crop(
            jpegs,
            device=decoder,
            output_type=types.RGB,
            random_area=list(RRC_AREA),
            random_aspect_ratio=list(RRC_RATIO),
            num_attempts=10,
        )
        images = fn.resize(images, size=[CROP, CROP], antialias=True)
        images = fn.crop_mirror_normalize(images, mirror=fn.random.coin_flip(), **common)
    else:
        images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
        if mode == "scale":
            low, high = SCALE_SHORTER
            shorter = fn.random.uniform(values=[float(s) for s in range(low, high + 1)])
        else:
            shorter = float(EVAL_SHORTER)
        # subpixel_scale=False: scale to the rounded output size, as torchvision does, so the
        # two backends sample the same grid.
        images = fn.resize(images, resize_shorter=shorter, antialias=True, subpixel_scale=False)
        if mode == "scale":
            images = fn.crop_mirror_normalize(
                images,
                crop=(CROP, CROP),
                crop_pos_x=fn.random.uniform(range=[0.0, 1.0]),
                crop_pos_y=fn.random.uniform(range=[0.0, 1.0]),
                mirror=fn.random.coin_flip(),
                **common,
            )
        elif mode == "center_crop":
            images = fn.crop_mirror_normalize(images, crop=(CROP, CROP), **common)
        elif mode == "ten_crop":
            crops = [
                fn.crop_mirror_normalize(
                    images, crop=(CROP, CROP), crop_pos_x=x, crop_pos_y=y, mirror=m, **common
                )
                for m in (0, 1)
                for x, y in FIVE_CROPS
            ]
            images = fn.stack(*crops, axis=0)
        else:
            raise ValueError(f"unknown ImageNet mode {mode!r}")
    if placement == "gpu":
        labels = labels.gpu()
    return images, labels


def build_pipeline(
    graph: Callable[[], tuple[DataNode, ...]],
    *,
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    seed: int,
) -> Pipeline:
    """A built pipeline around ``graph``; ``device_id=None`` is DALI's CPU-only mode."""
    global PIPELINES_BUILT
    PIPELINES_BUILT = True
    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    with pipe:
        pipe.set_outputs(*graph())
    pipe.build()
    return pipe

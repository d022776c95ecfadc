"""CUDA graphs for the training step's forward and backward (``train.cuda_graphs``).

The CIFAR-10 ResNets at batch 128 are small: on a GPU a step of ResNet-56 is hundreds of
short kernels, and launching them one by one from Python takes longer than running them. A
captured graph replays a whole forward, or a whole backward, as one launch
(``torch.cuda.make_graphed_callables``). Full training batches replay the graphs; a partial
last batch and evaluation (``model.eval()``) run the ordinary forward, on the same weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def capture(
    model: torch.nn.Module, example: torch.Tensor, dtype: torch.dtype | None
) -> Callable[[], None]:
    """Graph ``model``'s training forward and backward for batches shaped like ``example``.

    Call before the data loaders start their threads (a capture forbids other CUDA work in
    the process) and in training mode. The capture's warm-up passes would move the batch-norm
    running statistics, so they are put back. Returns a function that restores the ordinary
    forward (for saving or exporting the model).

    Args:
        model: On the current CUDA device, in training mode.
        example: A batch of the training shape, memory format and device (its values are
            not used for anything that lasts).
        dtype: The autocast dtype of the training forward, or None for fp32.
    """
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    eager = model.forward
    with torch.autocast(
        "cuda", dtype=dtype or torch.bfloat16, enabled=dtype is not None, cache_enabled=False
    ):
        torch.cuda.make_graphed_callables(model, (example,))
    graphed = model.forward
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    evaluate = _capture_inference(model, eager, example, dtype)
    shape = example.shape

    def forward(images: torch.Tensor) -> torch.Tensor:
        if images.shape == shape:
            if model.training:
                return graphed(images)
            if not torch.is_grad_enabled():
                return evaluate(images)
        return eager(images)

    model.forward = forward

    def restore() -> None:
        model.__dict__.pop("forward", None)

    return restore


def _capture_inference(
    model: torch.nn.Module,
    eager: Callable[[torch.Tensor], torch.Tensor],
    example: torch.Tensor,
    dtype: torch.dtype | None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A graph of the evaluation forward (eval mode, no grad); returns a fresh output tensor."""
    static_input = example.clone()
    was_training = model.training
    model.eval()
    context = torch.autocast(
        "cuda", dtype=dtype or torch.bfloat16, enabled=dtype is not None, cache_enabled=False
    )
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad(), context:
            for _ in range(3):  # warm-up: cuDNN picks its algorithms outside the capture
                eager(static_input)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), context, torch.cuda.graph(graph):
            static_output = eager(static_input)
    finally:
        model.train(was_training)

    def evaluate(images: torch.Tensor) -> torch.Tensor:
        static_input.copy_(images)
        graph.replay()
        return static_output.clone()

    return evaluate

"""Code that runs both eagerly and inside a traced (TorchScript) or exported (ONNX) graph: whether it is
being traced, and top-k sizes that follow a graph's dynamic input.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.onnx.operators import shape_as_tensor


def in_graph() -> bool:
    """Whether the code runs to be traced (TorchScript) or exported (ONNX) rather than eagerly."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def topk_size(x: Tensor, k: int, dim: int = 1):
    """min(k, x.shape[dim]), the k of `x.topk`: an int in eager code, a graph value in a traced one, so
    that a graph with a dynamic input size never asks a small input for more than it has."""
    if not in_graph():
        return min(k, x.shape[dim])
    size = shape_as_tensor(x)[dim : dim + 1]  # (1,)
    return torch.cat([torch.tensor([k], dtype=size.dtype), size]).min()

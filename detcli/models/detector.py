"""The detector: backbone -> neck -> head, with a criterion for training and a postprocess for inference.

One interface for every head:
- training: `model(images, targets)` with targets {boxes (B, M, 4), labels (B, M), image_sizes (B, 2)};
  the head gets the targets and image sizes too (a two-stage head samples proposals from them), the
  criterion gets the head's outputs, the targets and the training progress; a dict of named losses
  comes back.
- eval: `model(images, image_sizes=...)` returns fixed-shape detections (boxes, scores, labels); the head
  gets the image sizes too (a two-stage head clips its proposals to them).
- scale fit: `model.reachable(gt_boxes, gt_labels, (H, W))` asks the head for its priors at that input size
  (`head.priors(feature_sizes, device)`: points, anchors) and the criterion which gts they can give a positive
  (`criterion.reachable(priors, gt_boxes, gt_labels)`), without running the network.

The three parts a head brings are written down below as typing.Protocols (Head, Criterion, Postprocess);
a new head implements them (detcli/models/heads/, detcli/losses/) and nothing else changes: the trainer, the
tasks and export call only these methods.

Naming: B = images, M = gt boxes per image (padded with label -1), R = priors, C = classes, D = max_det.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.onnx.operators import shape_as_tensor

from detcli.ops.tracing import in_graph


@dataclass(frozen=True)
class TrainingProgress:
    """Where the run is, for criteria whose terms change during training. `fraction` is
    step / total_steps; `final_phase` is set in the last epochs, when the training data turns its strong
    augmentation off (data.close_mosaic), where YOLOX switches its L1 term on."""

    step: int = 0
    total_steps: int = 1
    epoch: int = 0
    epochs: int = 1
    final_phase: bool = False

    @property
    def fraction(self) -> float:
        return self.step / max(1, self.total_steps)


@runtime_checkable
class Head(Protocol):
    """Predicts only. Built with in_channels, strides, num_classes (detcli/build.py injects them)."""

    strides: list[int]

    def forward(self, feats: list[Tensor], targets: dict | None = None, image_sizes: Tensor | None = None) -> dict:
        """Neck features (one (B, A, h, w) per stride) -> the raw predictions the criterion and the postprocess
        read (a dict; a dense head's include `level_sizes`). In training, `targets` as Detector.forward's."""

    def priors(self, sizes: list[tuple[int, int]], device) -> dict:
        """The head's priors (points, anchors) for feature maps of these (h, w) sizes, for Criterion.reachable."""

    def class_layout(self) -> dict[str, tuple[int, int]]:
        """The parameters (names relative to the head) whose first axis runs over the classes: name -> (rows
        per class, rows after the classes' (a background row)). Weights from a model of other classes are
        moved row by row by class name (detcli/weights/transfer.py)."""

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...


@runtime_checkable
class Criterion(Protocol):
    """Assigns targets to predictions (an assigner from detcli/assigners) and returns named losses."""

    def forward(self, preds: dict, targets: dict, progress: TrainingProgress | None = None) -> dict[str, Tensor]:
        """preds: Head.forward's; targets: boxes (B, M, 4), labels (B, M) padded with -1, image_sizes (B, 2);
        -> {"loss_name": () tensor}, summed by the trainer."""

    def reachable(self, priors: dict, gt_boxes: Tensor, gt_labels: Tensor) -> Tensor:
        """(B, M) bool: the gts that can get at least one positive among `priors` under this assignment."""


@runtime_checkable
class Postprocess(Protocol):
    """Decoding, threshold, NMS (detcli/ops/nms.py) to fixed-shape detections; the same code runs eagerly,
    traced and in the exported graph. Built with num_classes plus its config keys (score_thresh, max_det...)."""

    score_thresh: float
    max_det: int

    def forward(self, preds: dict, image_sizes: Tensor) -> dict[str, Tensor]:
        """-> boxes (B, D, 4) in input pixels, scores (B, D), labels (B, D) with -1 for padding."""

    def scores_and_boxes(self, preds: dict) -> tuple[Tensor, Tensor]:
        """The decoding alone, before threshold and NMS: scores (B, R, C), boxes (B, R, 4) (`export.nms=false`)."""


class Detector(nn.Module):
    def __init__(self, backbone: nn.Module, neck: nn.Module, head: Head, criterion: Criterion,
                 postprocess: Postprocess):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.criterion = criterion
        self.postprocess = postprocess
        # images come in as 0-255 pixels (uint8 or float); normalisation is part of the model, so an
        # exported graph takes raw pixels too
        self.register_buffer("pixel_mean", torch.tensor(backbone.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.std).view(1, 3, 1, 1) * 255, persistent=False)
        self.progress = TrainingProgress()  # set by the trainer before each step

    def forward(self, images: Tensor, targets: dict | None = None, image_sizes: Tensor | None = None):
        """images (B, 3, H, W) in 0-255; targets: boxes (B, M, 4) and labels (B, M) padded with -1, and
        image_sizes (B, 2); image_sizes (B, 2) as (h, w) of the unpadded content (default: H, W)."""
        if self.training:
            if targets is None:
                raise ValueError("Detector.forward: targets are needed in training mode")
            sizes = targets.get("image_sizes", image_sizes)
            targets = {**targets, "image_sizes": self._sizes(images, sizes)}
            preds = self.head(self.features(images), targets=targets, image_sizes=targets["image_sizes"])
            return self.criterion(preds, targets, progress=self.progress)
        sizes = self._sizes(images, image_sizes)
        return self.postprocess(self.head(self.features(images), image_sizes=sizes), sizes)

    @staticmethod
    def _sizes(images: Tensor, image_sizes: Tensor | None) -> Tensor:
        if image_sizes is None:  # (B, 2): the whole padded input, a graph value when traced (dynamic sizes)
            if in_graph():
                return shape_as_tensor(images)[-2:].to(images.device).expand(images.shape[0], 2)
            return torch.tensor(images.shape[-2:], device=images.device).expand(images.shape[0], 2)
        return image_sizes.to(images.device)

    def features(self, images: Tensor) -> list[Tensor]:
        """Neck outputs for 0-255 images (normalised here)."""
        # in the weights' dtype: fp32 (autocast casts inside), fp16 in an `export.half=true` model
        x = ((images.float() - self.pixel_mean) / self.pixel_std).to(self.pixel_std.dtype)
        if images.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.neck(self.backbone(x))

    def predict(self, images: Tensor, image_sizes: Tensor | None = None, targets: dict | None = None) -> dict:
        """Raw head outputs for 0-255 images (in training mode a two-stage head needs the targets)."""
        return self.head(self.features(images), targets=targets, image_sizes=self._sizes(images, image_sizes))

    @torch.no_grad()
    def reachable(self, gt_boxes: Tensor, gt_labels: Tensor, input_size: tuple[int, int]) -> Tensor:
        """(B, M) bool: the gt boxes (B, M, 4), in input pixels, labels (B, M) padded with -1, that can get at
        least one positive at all in a (H, W) input, before any training: the head's priors (points, anchors)
        at that size under the criterion's assignment rule. The feature sizes are ceil(H / stride), exact for
        inputs padded to a multiple of the largest backbone stride."""
        H, W = input_size
        sizes = [(math.ceil(H / s), math.ceil(W / s)) for s in self.head.strides]
        priors = self.head.priors(sizes, gt_boxes.device)
        return self.criterion.reachable(priors, gt_boxes, gt_labels)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for part in (self.backbone, self.neck, self.head):
            part.set_grad_checkpointing(enable)

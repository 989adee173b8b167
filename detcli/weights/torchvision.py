"""torchvision's published detection weights in detcli's names: the FCOS and Faster R-CNN ResNet-50-FPN that
torchvision trained on COCO (`torchvision:FCOS_ResNet50_FPN_Weights.COCO_V1`), fetched through torchvision's own
weights API (its hub cache: $TORCH_HOME/hub/checkpoints), or read from a local copy of such a file.

detcli builds the same networks: timm's resnet50 holds torchvision's layout (conv1, bn1, layer1-4), detcli's FPN
and heads hold the same layers under other names; FrozenBatchNorm as torchvision fine-tunes them. What differs
is set by the architecture's `config` (torchvision's FCOS puts its points on the cells' corners; its thresholds).
Faster R-CNN's class rows are reordered on the way: torchvision puts the background first, detcli last, and has
no box deltas for it.

Naming: C = classes (torchvision's COCO: 91 with the background and the unused "N/A" ids).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from detcli.errors import CheckpointError, ConfigError

_FPN = [
    (r"^backbone\.body\.", "backbone.body."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.(?:0\.)?", r"neck.lateral.\1."),  # torchvision >= 0.13 nests a .0
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.(?:0\.)?", r"neck.output.\1."),
]


@dataclass(frozen=True)
class Architecture:
    """A torchvision detector detcli rebuilds: the config keys that make detcli's network the same one
    (`requires`, checked before weights are loaded into a training run), the group choices and the inference
    settings torchvision ships it with (`config`, for eval / predict / export of the weights alone), and the key
    names (`rename`, torchvision's -> detcli's)."""

    builder: str
    groups: tuple[str, ...]
    requires: dict
    inference: dict
    rename: list[tuple[str, str]] = field(default_factory=list)
    marker: str = ""  # a key prefix only this architecture's state dict has

    def overrides(self) -> list[str]:
        """Hydra overrides composing detcli's config of this network, as torchvision runs it."""
        return [*self.groups, *(f"{k}={_value(v)}" for k, v in {**self.requires, **self.inference}.items())]


# what both networks share: torchvision's resnet50 (timm's holds its layout) under a 256-channel FPN, run with
# frozen BatchNorm, and their COCO training size
_R50_FPN = {"backbone.name": "resnet50", "neck._target_": "detcli.models.necks.fpn.FPN", "neck.out_channels": 256}
_RUN = {"backbone.freeze_bn": True, "postprocess.max_det": 100, "data.image_size": [800, 1333]}

FCOS = Architecture(
    builder="fcos_resnet50_fpn",
    groups=("head=fcos", "backbone=resnet50"),
    requires={**_R50_FPN, "backbone.strides": [8, 16, 32], "neck.extra_levels": 2, "neck.extra_from": "output",
              "head._target_": "detcli.models.heads.fcos.FCOSHead", "head.num_convs": 4, "head.norm_groups": 32,
              "head.point_offset": 0.0},
    # torchvision's FCOS defaults: score_thresh 0.2, 1000 candidates a level, NMS 0.6
    inference={**_RUN, "postprocess.score_thresh": 0.2, "postprocess.topk_per_level": 1000,
               "postprocess.nms_thresh": 0.6},
    rename=[*_FPN,
            (r"^backbone\.fpn\.extra_blocks\.p6\.", "neck.extra.0."),
            (r"^backbone\.fpn\.extra_blocks\.p7\.", "neck.extra.1."),
            (r"^head\.classification_head\.conv\.", "head.cls_tower."),
            (r"^head\.classification_head\.cls_logits\.", "head.cls_logits."),
            (r"^head\.regression_head\.conv\.", "head.box_tower."),
            (r"^head\.regression_head\.bbox_reg\.", "head.bbox_pred."),
            (r"^head\.regression_head\.bbox_ctrness\.", "head.centerness.")],
    marker="head.regression_head.bbox_ctrness.",  # RetinaNet has a classification_head too, no centerness
)
FASTER_RCNN = Architecture(
    builder="fasterrcnn_resnet50_fpn",
    groups=("head=faster_rcnn", "backbone=resnet50"),
    # torchvision runs these COCO weights with eps 0 in the frozen BatchNorm (their legacy: overwrite_eps)
    requires={**_R50_FPN, "backbone.strides": [4, 8, 16, 32], "backbone.bn_eps": 0.0, "neck.extra_levels": 1,
              "neck.extra_from": "maxpool", "head._target_": "detcli.models.heads.faster_rcnn.FasterRCNNHead",
              "head.anchor_sizes": [32, 64, 128, 256, 512], "head.aspect_ratios": [0.5, 1.0, 2.0],
              "head.roi_output_size": 7, "head.fc_dim": 1024},
    # torchvision's Faster R-CNN defaults: RPN 1000 / 1000 at test with NMS 0.7; box score 0.05, NMS 0.5
    inference={**_RUN, "head.pre_nms_topk.test": 1000, "head.post_nms_topk.test": 1000, "head.rpn_nms_thresh": 0.7,
               "postprocess.score_thresh": 0.05, "postprocess.nms_thresh": 0.5},
    rename=[*_FPN,
            (r"^rpn\.head\.conv\.(?:0\.0\.)?", "head.rpn.conv."),  # torchvision >= 0.13: conv.0.0
            (r"^rpn\.head\.cls_logits\.", "head.rpn.cls_logits."),
            (r"^rpn\.head\.bbox_pred\.", "head.rpn.bbox_pred."),
            (r"^roi_heads\.box_head\.fc6\.", "head.box_head.1."),
            (r"^roi_heads\.box_head\.fc7\.", "head.box_head.3."),
            (r"^roi_heads\.box_predictor\.cls_score\.", "head.cls_score."),
            (r"^roi_heads\.box_predictor\.bbox_pred\.", "head.bbox_pred.")],
    marker="roi_heads.box_predictor.",
)
# torchvision's weights enum -> the architecture detcli rebuilds
ENUMS = {"FCOS_ResNet50_FPN_Weights": FCOS, "FasterRCNN_ResNet50_FPN_Weights": FASTER_RCNN}


@dataclass
class Converted:
    """A torchvision state dict in detcli's names and class layout, with its classes."""

    state: dict[str, Tensor]
    class_names: list[str]
    cat_ids: list[int]
    architecture: Architecture


def weights_enum(name: str):
    """`FCOS_ResNet50_FPN_Weights.COCO_V1` -> (torchvision's weights enum member, the architecture detcli builds
    for it), without reading the file."""
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError) as e:
        raise ConfigError(f"weights=torchvision:{name}: torchvision has no such weights ({e}). detcli maps "
                          f"{', '.join(f'{k}.COCO_V1' for k in ENUMS)}.") from e
    kind = type(weights).__name__
    if kind not in ENUMS:
        raise ConfigError(f"weights=torchvision:{name}: detcli does not rebuild the network of {kind}; it maps "
                          f"{', '.join(f'{k}.COCO_V1' for k in ENUMS)}.")
    return weights, ENUMS[kind]


def fetch(name: str) -> tuple[dict, list[str], Architecture]:
    """`FCOS_ResNet50_FPN_Weights.COCO_V1` -> (torchvision's state dict, its categories, the architecture),
    through torchvision's weights API: read from its hub cache, downloaded there when missing."""
    weights, arch = weights_enum(name)
    file = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    try:
        state = weights.get_state_dict(progress=True, check_hash=False)
    except Exception as e:
        raise ConfigError(
            f"weights=torchvision:{name}: could not read or download {weights.url} ({type(e).__name__}: "
            f"{str(e)[:200]}). torchvision keeps it as '{file}' (the folder follows $TORCH_HOME); on an offline "
            f"machine copy the file there, or give its path: weights=/path/to/{file.name}.") from e
    return state, list(weights.meta["categories"]), arch


def architecture_of(state: dict) -> Architecture | None:
    """The torchvision architecture a state dict (torchvision's names) is of, None for another kind."""
    for arch in ENUMS.values():
        if any(k.startswith(arch.marker) for k in state) and any(k.startswith("backbone.body.") for k in state):
            return arch
    return None


def convert(state: dict, categories: list[str] | None, arch: Architecture, source: str) -> Converted:
    """torchvision's state dict -> detcli's names and class layout. `categories`: the class names of its rows
    (torchvision's meta; None: COCO's when it has COCO's 91 rows, else class_<i>)."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):  # FrozenBatchNorm has none; a trained BatchNorm's count
            continue
        out[_rename(key, arch.rename)] = value
    rows = out["head.cls_logits.bias" if arch is FCOS else "head.cls_score.bias"].shape[0]
    names = list(categories) if categories is not None else _default_names(rows)
    if len(names) != rows:
        raise CheckpointError(f"weights '{source}': {len(names)} category names for {rows} class rows.")
    if arch is FCOS:
        # torchvision's FCOS has no per-level scale on its box regression: detcli's Scale at 1 is the same
        for level in range(5):
            out[f"head.scales.{level}.scale"] = torch.tensor(1.0)
        return Converted(out, names, list(range(rows)), arch)
    # Faster R-CNN: torchvision's row 0 is the background; detcli keeps it last and has no box deltas for it
    for part in ("weight", "bias"):
        score = out[f"head.cls_score.{part}"]
        out[f"head.cls_score.{part}"] = torch.cat([score[1:], score[:1]])
        out[f"head.bbox_pred.{part}"] = out[f"head.bbox_pred.{part}"][4:]
    return Converted(out, names[1:], list(range(1, rows)), arch)


def _default_names(rows: int) -> list[str]:
    if rows == 91:
        from torchvision.models.detection.fcos import FCOS_ResNet50_FPN_Weights

        return list(FCOS_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    return [f"class_{i}" for i in range(rows)]


def _rename(key: str, table: list[tuple[str, str]]) -> str:
    for pattern, replacement in table:
        new, hits = re.subn(pattern, replacement, key)
        if hits:
            return new
    return f"torchvision.{key}"  # not a part detcli rebuilds: reported as skipped


def _value(v) -> str:
    if isinstance(v, list):
        return "[" + ",".join(str(x) for x in v) + "]"
    return str(v)

"""torchvision's detectors as the benchmarks compare detcli with them (scripts/bench_train.py,
scripts/bench_infer.py, scripts/bench_accuracy.py, tests/models/test_faster_rcnn_parity.py): FCOS and FasterRCNN on a
torchvision resnet + FPN, sized and set like detcli's, and detcli's Faster R-CNN weights loaded into
torchvision's twin.

Naming: C = classes (without the background).
"""

from __future__ import annotations

import torch


def torchvision_fcos(backbone: str, size: int, num_classes: int):
    """torchvision.models.detection.FCOS with a torchvision resnet + FPN P3-P7, sized like detcli's."""
    import torchvision
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    net = getattr(torchvision.models, backbone)(weights=None)
    fpn = _resnet_fpn_extractor(net, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return FCOS(fpn, num_classes, min_size=size, max_size=size, score_thresh=0.05, nms_thresh=0.6,
                detections_per_img=100, topk_candidates=1000)


def torchvision_faster_rcnn(backbone: str, size: int, num_classes: int):
    """torchvision.models.detection.FasterRCNN as fasterrcnn_resnet50_fpn builds it (resnet C2-C5, FPN with
    a max-pooled P6, RPN, MultiScaleRoIAlign, TwoMLPHead), with detcli's RPN and RoI settings."""
    import torchvision
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    net = getattr(torchvision.models, backbone)(weights=None)
    fpn = _resnet_fpn_extractor(net, 5)  # all layers trained, as detcli's default freeze_at=0
    return FasterRCNN(fpn, num_classes + 1, min_size=size, max_size=size, rpn_pre_nms_top_n_train=2000,
                      rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_train=1000, rpn_post_nms_top_n_test=1000,
                      box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100)


TORCHVISION_MODELS = {"fcos": torchvision_fcos, "faster_rcnn": torchvision_faster_rcnn}


@torch.no_grad()
def share_faster_rcnn_weights(tv, ours) -> None:
    """Load detcli's Faster R-CNN weights into torchvision's twin (timm and torchvision resnets name their
    layers alike), so both run the same network on the same proposals: with each side's own random init
    the RPNs keep different numbers of proposals (at 256 px about 790 against 1000 per image), and the
    second stage, most of the inference time, would be timed on different amounts of work."""
    head, neck = ours.head, ours.neck
    C = head.num_classes
    state = {f"backbone.body.{k}": v for k, v in ours.backbone.body.state_dict().items()}
    for i, (lateral, output) in enumerate(zip(neck.lateral, neck.output)):
        state |= {f"backbone.fpn.inner_blocks.{i}.0.{k}": v for k, v in lateral.state_dict().items()}
        state |= {f"backbone.fpn.layer_blocks.{i}.0.{k}": v for k, v in output.state_dict().items()}
    for ours_name, tv_name in (("conv", "conv.0.0"), ("cls_logits", "cls_logits"), ("bbox_pred", "bbox_pred")):
        state |= {f"rpn.head.{tv_name}.{k}": v for k, v in getattr(head.rpn, ours_name).state_dict().items()}
    state |= {f"roi_heads.box_head.fc6.{k}": v for k, v in head.box_head[1].state_dict().items()}
    state |= {f"roi_heads.box_head.fc7.{k}": v for k, v in head.box_head[3].state_dict().items()}
    w, b = head.cls_score.weight, head.cls_score.bias  # torchvision: background is class 0, with its own deltas
    state["roi_heads.box_predictor.cls_score.weight"] = torch.cat([w[C:], w[:C]])
    state["roi_heads.box_predictor.cls_score.bias"] = torch.cat([b[C:], b[:C]])
    w, b = head.bbox_pred.weight, head.bbox_pred.bias
    state["roi_heads.box_predictor.bbox_pred.weight"] = torch.cat([w.new_zeros(4, w.shape[1]), w])
    state["roi_heads.box_predictor.bbox_pred.bias"] = torch.cat([b.new_zeros(4), b])
    tv.load_state_dict(state)  # strict: every tensor of the twin is given

"""YOLOX's box coder, the shared loss terms and the YOLOX criterion, against hand-computed values and
torchvision.ops."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import (
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

from detcli.assigners.simota import SimOTAAssigner
from detcli.losses.terms import box_loss, class_loss
from detcli.losses.yolox import YOLOXCriterion
from detcli.models.detector import TrainingProgress
from detcli.ops.boxes import paired_iou
from detcli.ops.points import boxes_to_offsets, offsets_to_boxes


def test_offsets_decode_by_hand_and_invert():
    # point (12, 4), stride 8, offsets (0.5, -0.25, log 2, 0): centre (16, 2), size (16, 8) -> (8, -2, 24, 6)
    points, strides = torch.tensor([[12.0, 4.0]]), torch.tensor([8.0])
    reg = torch.tensor([[[0.5, -0.25, math.log(2.0), 0.0]]])
    boxes = offsets_to_boxes(points, strides, reg)
    assert torch.allclose(boxes, torch.tensor([[[8.0, -2.0, 24.0, 6.0]]]))
    assert torch.allclose(boxes_to_offsets(points, strides, boxes), reg, atol=1e-6)


def test_box_terms_by_hand_and_against_torchvision():
    pred = torch.tensor([[0.0, 0, 14, 8], [12, 0, 20, 8], [1, 2, 30, 40]])
    target = torch.tensor([[0.0, 0, 16, 8], [0, 0, 16, 8], [5, 5, 25, 35]])
    iou = torch.tensor([0.875, 0.2])  # 112 / 128; 32 / 160
    assert torch.allclose(box_loss("iou", pred, target)[:2], 1 - iou, atol=1e-6)
    assert torch.allclose(box_loss("iou_squared", pred, target)[:2], 1 - iou**2, atol=1e-6)
    for name, ref in (("giou", generalized_box_iou_loss), ("diou", distance_box_iou_loss),
                      ("ciou", complete_box_iou_loss)):
        assert torch.allclose(box_loss(name, pred, target), ref(pred, target, reduction="none"), atol=1e-6)
    with pytest.raises(ValueError, match="iou | iou_squared"):
        box_loss("l2", pred, target)


def test_class_terms_against_torchvision():
    logits, targets = torch.randn(5, 3), torch.rand(5, 3)
    assert torch.allclose(class_loss("focal", logits, targets, 0.25, 2.0),
                          sigmoid_focal_loss(logits, targets, 0.25, 2.0, reduction="none"))
    assert torch.allclose(class_loss("bce", logits, targets),
                          F.binary_cross_entropy_with_logits(logits, targets, reduction="none"))


class FixedAssigner(torch.nn.Module):
    """Returns a given matching, to check the loss terms alone."""

    def __init__(self, matched, ious):
        super().__init__()
        self.matched, self.ious = matched, ious

    def forward(self, *args):
        return self.matched, self.ious


def preds_and_targets(B=1):
    g = torch.Generator().manual_seed(0)
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [28.0, 4.0]])
    return {
        "cls_logits": torch.randn(B, 4, 2, generator=g),
        "box_offsets": torch.randn(B, 4, 4, generator=g) * 0.3,
        "objectness": torch.randn(B, 4, generator=g),
        "points": points, "strides": torch.full((4,), 8.0), "level_sizes": [4],
    }, {"boxes": torch.tensor([[[0.0, 0, 16, 8], [10, 0, 30, 8]]]).expand(B, 2, 4),
        "labels": torch.tensor([[0, 1]]).expand(B, 2)}


def test_terms_are_normalised_by_positives_with_iou_aware_targets():
    preds, targets = preds_and_targets()
    matched = torch.tensor([[0, 1, -1, 1]])  # three positives
    ious = torch.tensor([[0.7, 0.4, 0.0, 0.9]])
    crit = YOLOXCriterion(2, FixedAssigner(matched, ious), use_l1=True)
    out = crit(preds, targets)
    boxes = offsets_to_boxes(preds["points"], preds["strides"], preds["box_offsets"])[0]  # (4, 4)
    gt = targets["boxes"][0][torch.tensor([0, 1, 1])]  # (3, 4) the matched gts of points 0, 1, 3
    pos = torch.tensor([0, 1, 3])
    expected_box = 5.0 * (1 - paired_iou(boxes[pos], gt) ** 2).sum() / 3
    fg = torch.tensor([1.0, 1.0, 0.0, 1.0])
    expected_obj = F.binary_cross_entropy_with_logits(preds["objectness"][0], fg, reduction="sum") / 3
    cls_target = torch.tensor([[0.7, 0.0], [0.0, 0.4], [0.0, 0.9]])  # one-hot x IoU with the matched gt
    expected_cls = F.binary_cross_entropy_with_logits(preds["cls_logits"][0, pos], cls_target, reduction="sum") / 3
    l1_target = boxes_to_offsets(preds["points"][pos], preds["strides"][pos], gt)
    expected_l1 = (preds["box_offsets"][0, pos] - l1_target).abs().sum() / 3
    for key, value in (("loss_box", expected_box), ("loss_obj", expected_obj), ("loss_cls", expected_cls),
                       ("loss_l1", expected_l1)):
        assert torch.allclose(out[key], value, atol=1e-5), key


def test_l1_term_follows_the_final_phase():
    preds, targets = preds_and_targets()
    crit = YOLOXCriterion(2, SimOTAAssigner())  # use_l1=auto
    assert crit(preds, targets, progress=TrainingProgress(step=1))["loss_l1"] == 0
    assert crit(preds, targets, progress=TrainingProgress(step=1, final_phase=True))["loss_l1"] > 0
    assert YOLOXCriterion(2, SimOTAAssigner(), use_l1=True)(preds, targets)["loss_l1"] > 0
    assert YOLOXCriterion(2, SimOTAAssigner(), use_l1=False)(
        preds, targets, progress=TrainingProgress(final_phase=True))["loss_l1"] == 0


def test_no_boxes_gives_finite_losses_and_only_objectness():
    preds, _ = preds_and_targets(B=2)
    crit = YOLOXCriterion(2, SimOTAAssigner(), use_l1=True)
    for boxes, labels in ((torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long)),
                          (torch.zeros(2, 1, 4), torch.full((2, 1), -1))):
        out = crit(preds, {"boxes": boxes, "labels": labels})
        assert all(torch.isfinite(v) for v in out.values())
        assert out["loss_box"] == 0 and out["loss_cls"] == 0 and out["loss_l1"] == 0
        # every point is a negative: the objectness BCE against 0, divided by max(1, 0 positives)
        expected = F.binary_cross_entropy_with_logits(preds["objectness"], torch.zeros(2, 4), reduction="sum")
        assert torch.allclose(out["loss_obj"], expected)


def test_losses_stay_fp32_and_give_gradients_under_autocast():
    preds, targets = preds_and_targets(B=2)
    for k in ("cls_logits", "box_offsets", "objectness"):
        preds[k] = preds[k].to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = YOLOXCriterion(2, SimOTAAssigner(), use_l1=True)(preds, targets)
    assert all(v.dtype == torch.float32 for v in out.values())
    sum(out.values()).backward()
    assert all(preds[k].grad is not None and torch.isfinite(preds[k].grad.float()).all()
               for k in ("cls_logits", "box_offsets", "objectness"))


def test_loss_choices_are_checked():
    with pytest.raises(ValueError, match="loss.box_loss='l2'"):
        YOLOXCriterion(2, SimOTAAssigner(), box_loss="l2")
    with pytest.raises(ValueError, match="loss.cls_loss"):
        YOLOXCriterion(2, SimOTAAssigner(), cls_loss="softmax")

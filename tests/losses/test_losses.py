"""FCOS criterion against torchvision.ops computed by hand on the positives."""

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from detcli.assigners.fcos import FCOSAssigner
from detcli.losses.fcos import FCOSCriterion, centerness_target
from detcli.ops.points import grid_points, ltrb_to_boxes


def make_preds(B=2, C=3, sizes=((8, 8), (4, 4)), strides=(8, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    points, point_strides = grid_points(list(sizes), list(strides))
    R = points.shape[0]
    return {
        "cls_logits": torch.randn(B, R, C, generator=g),
        "bbox_reg": torch.rand(B, R, 4, generator=g) * 20 + 1,
        "centerness": torch.randn(B, R, generator=g),
        "points": points,
        "strides": point_strides,
        "level_sizes": [h * w for h, w in sizes],
    }


def test_centerness_target_by_hand():
    ltrb = torch.tensor([[2.0, 4.0, 8.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    # sqrt(2/8 * 4/4) = 0.5; a centred point gives 1
    assert torch.allclose(centerness_target(ltrb), torch.tensor([0.5, 1.0]))


def test_losses_match_torchvision_ops_on_positives():
    preds = make_preds()
    C = preds["cls_logits"].shape[-1]
    assigner = FCOSAssigner([8, 16], center_radius=1.5)
    crit = FCOSCriterion(C, assigner)
    boxes = torch.tensor([[[4.0, 4.0, 40.0, 30.0], [30.0, 30.0, 60.0, 62.0]], [[10.0, 12.0, 50.0, 50.0], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 2], [1, -1]])
    losses = crit(preds, {"boxes": boxes, "labels": labels})

    matched = assigner(preds["points"], preds["strides"], preds["level_sizes"], boxes, labels >= 0)
    fg = matched >= 0
    n = fg.sum().float()
    assert n > 0
    b_idx, r_idx = fg.nonzero(as_tuple=True)
    gt = boxes[b_idx, matched[fg]]  # (P, 4)
    target = torch.zeros_like(preds["cls_logits"])
    target[b_idx, r_idx, labels[b_idx, matched[fg]]] = 1
    expected_cls = sigmoid_focal_loss(preds["cls_logits"], target, reduction="sum") / n
    pred_boxes = ltrb_to_boxes(preds["points"], preds["bbox_reg"])[b_idx, r_idx]
    expected_box = generalized_box_iou_loss(pred_boxes, gt, reduction="sum") / n
    pts = preds["points"][r_idx]
    ctr = centerness_target(torch.cat([pts - gt[:, :2], gt[:, 2:] - pts], 1))
    expected_ctr = F.binary_cross_entropy_with_logits(preds["centerness"][b_idx, r_idx], ctr, reduction="sum") / n
    torch.testing.assert_close(losses["loss_cls"], expected_cls)
    torch.testing.assert_close(losses["loss_box"], expected_box)
    torch.testing.assert_close(losses["loss_ctr"], expected_ctr)


def test_no_boxes_gives_finite_losses_and_zero_box_terms():
    preds = make_preds()
    preds["cls_logits"].requires_grad_(True)
    preds["bbox_reg"].requires_grad_(True)
    crit = FCOSCriterion(3, FCOSAssigner([8, 16]))
    losses = crit(preds, {"boxes": torch.zeros(2, 0, 4), "labels": torch.zeros(2, 0, dtype=torch.long)})
    assert losses["loss_box"] == 0 and losses["loss_ctr"] == 0
    # with no positives the focal loss is summed over negatives and divided by max(1, 0) = 1
    expected = sigmoid_focal_loss(preds["cls_logits"], torch.zeros_like(preds["cls_logits"]), reduction="sum")
    torch.testing.assert_close(losses["loss_cls"], expected)
    sum(losses.values()).backward()
    assert torch.isfinite(preds["cls_logits"].grad).all() and torch.isfinite(preds["bbox_reg"].grad).all()


def test_losses_stay_fp32_under_autocast():
    preds = make_preds()
    crit = FCOSCriterion(3, FCOSAssigner([8, 16]))
    targets = {"boxes": torch.tensor([[[4.0, 4.0, 40.0, 30.0]]] * 2), "labels": torch.tensor([[1], [0]])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = crit({k: v.bfloat16() if torch.is_tensor(v) and v.is_floating_point() and k != "points" else v
                     for k, v in preds.items()}, targets)
    assert all(v.dtype == torch.float32 for v in half.values())

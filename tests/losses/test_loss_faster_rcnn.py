"""Faster R-CNN criterion against torchvision's own loss code on the same inputs: the RPN's
(RegionProposalNetwork.assign_targets_to_anchors + compute_loss) and the box head's (RoIHeads
.select_training_samples + fastrcnn_loss). The samplers are given room for every box, so that both sides
take the same sets and no randomness is involved; then the losses agree to float rounding."""

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork

from detcli.assigners.max_iou import BalancedSampler, MaxIoUMatcher
from detcli.losses.faster_rcnn import FasterRCNNCriterion

C = 4
ALL = 10**6  # a sampler quota above any count: everything is sampled


def random_boxes(n, g, lo=4.0, hi=60.0):
    xy = torch.rand(n, 2, generator=g) * 100
    return torch.cat([xy, xy + lo + torch.rand(n, 2, generator=g) * (hi - lo)], 1)  # (n, 4)


def gts():
    """Two images: three boxes, and one box plus a padding slot."""
    boxes = torch.tensor([[[10.0, 10, 50, 40], [60, 20, 90, 80], [30, 50, 70, 95]],
                          [[20.0, 30, 70, 60], [0, 0, 0, 0], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 3, 1], [2, -1, -1]])
    tv = [{"boxes": b[lab >= 0], "labels": lab[lab >= 0] + 1} for b, lab in zip(boxes, labels)]
    return boxes, labels, tv


def criterion(roi_box_loss="smooth_l1"):
    return FasterRCNNCriterion(C, MaxIoUMatcher(0.7, 0.3, True), BalancedSampler(ALL, 0.5), roi_box_loss=roi_box_loss)


def test_rpn_losses_equal_torchvision():
    g = torch.Generator().manual_seed(0)
    anchors = torch.cat([random_boxes(300, g), torch.tensor([[10.0, 10, 50, 40], [22, 28, 68, 62]])])  # (N, 4)
    boxes, labels, tv_targets = gts()
    N = len(anchors)
    logits, deltas = torch.randn(2, N, generator=g), torch.randn(2, N, 4, generator=g) * 0.3
    rpn = RegionProposalNetwork(AnchorGenerator(), None, 0.7, 0.3, ALL, 0.5, {"training": 1, "testing": 1},
                                {"training": 1, "testing": 1}, 0.7)
    tv_labels, matched_boxes = rpn.assign_targets_to_anchors([anchors, anchors], tv_targets)
    targets = rpn.box_coder.encode(matched_boxes, [anchors, anchors])
    tv_obj, tv_box = rpn.compute_loss(logits.reshape(-1, 1), deltas.reshape(-1, 4), tv_labels, targets)

    ours = criterion().rpn_losses({"rpn_logits": logits, "rpn_deltas": deltas, "anchors": anchors}, boxes, labels)
    assert (torch.stack(tv_labels) == 1).sum() > 3  # positives, low-quality ones included
    torch.testing.assert_close(ours["loss_rpn_cls"], tv_obj, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours["loss_rpn_box"], tv_box, atol=1e-6, rtol=1e-5)


def test_roi_losses_equal_torchvision():
    g = torch.Generator().manual_seed(1)
    boxes, labels, tv_targets = gts()
    proposals = [random_boxes(40, g), random_boxes(25, g)]
    for p, t in zip(proposals, tv_targets):  # near-gt proposals, so that some are positive
        p[: len(t["boxes"])] = t["boxes"] + torch.randn(len(t["boxes"]), 4, generator=g)
    heads = RoIHeads(None, None, None, 0.5, 0.5, ALL, 0.25, None, 0.05, 0.5, 100)
    rois, matched, tv_labels, tv_targets_enc = heads.select_training_samples(proposals, tv_targets)
    n = [len(r) for r in rois]
    S = max(n)
    logits = torch.randn(sum(n), C + 1, generator=g)  # torchvision's layout: background first
    regression = torch.randn(sum(n), (C + 1) * 4, generator=g) * 0.3
    tv_cls, tv_box = fastrcnn_loss(logits, regression, tv_labels, tv_targets_enc)

    def padded(x, fill=0.0):  # per-image rows (n_b, ...) -> (B, S, ...)
        return torch.stack([torch.cat([r, r.new_full((S - len(r), *r.shape[1:]), fill)]) for r in x.split(n)])

    preds = {
        "rois": padded(torch.cat(rois)),
        "roi_valid": padded(torch.ones(sum(n), dtype=torch.bool), False),
        "roi_matched": padded(torch.where(torch.cat(tv_labels) > 0, torch.cat(matched), -1), -1),
        "cls_logits": padded(torch.cat([logits[:, 1:], logits[:, :1]], 1)),  # ours: background last
        "box_deltas": padded(regression.reshape(-1, C + 1, 4)[:, 1:]),  # ours: no background deltas
    }
    ours = criterion().roi_losses(preds, boxes, labels)
    assert (torch.cat(tv_labels) > 0).sum() >= 4
    torch.testing.assert_close(ours["loss_cls"], tv_cls, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours["loss_box"], tv_box, atol=1e-6, rtol=1e-5)
    giou = criterion("giou").roi_losses(preds, boxes, labels)["loss_box"]
    assert torch.isfinite(giou) and giou > 0


def test_no_boxes_anywhere_gives_background_only_losses():
    g = torch.Generator().manual_seed(2)
    anchors = random_boxes(50, g)
    preds = {"rpn_logits": torch.randn(2, 50, generator=g), "rpn_deltas": torch.randn(2, 50, 4, generator=g),
             "anchors": anchors, "rois": random_boxes(20, g).reshape(2, 10, 4),
             "roi_valid": torch.ones(2, 10, dtype=torch.bool), "roi_matched": torch.full((2, 10), -1),
             "cls_logits": torch.randn(2, 10, C + 1, generator=g), "box_deltas": torch.randn(2, 10, C, 4, generator=g)}
    losses = criterion()(preds, {"boxes": torch.zeros(2, 0, 4), "labels": torch.zeros(2, 0, dtype=torch.long)})
    assert losses["loss_rpn_box"] == 0 and losses["loss_box"] == 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(preds["rpn_logits"], torch.zeros(2, 50))
    torch.testing.assert_close(losses["loss_rpn_cls"], bce)
    ce = torch.nn.functional.cross_entropy(preds["cls_logits"].reshape(-1, C + 1), torch.full((20,), C))
    torch.testing.assert_close(losses["loss_cls"], ce)

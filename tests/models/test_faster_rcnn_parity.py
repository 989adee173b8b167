"""head=faster_rcnn against torchvision on shared weights: anchors (AnchorGenerator), the box coder
(BoxCoder), multi-level RoIAlign (MultiScaleRoIAlign), and in eval mode the proposals of
RegionProposalNetwork and the detections of RoIHeads loaded with detcli's weights.

Tolerances: anchors and pooled features exactly equal up to float rounding (1e-5); coded deltas and
boxes 1e-4; proposals and detections 1e-3 px and 1e-5 in score (the two sides sum in different orders).
"""

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign

from detcli.models.heads.faster_rcnn import FasterRCNNHead, FasterRCNNPostprocess
from detcli.ops import box_coder
from detcli.ops.anchors import AnchorGrid
from detcli.ops.roi_align import MultiLevelRoIAlign, restore_order

STRIDES = [4, 8, 16, 32, 64]
SIZES = [32, 64, 128, 256, 512]
RATIOS = [0.5, 1.0, 2.0]
H = W = 256
A, C = 16, 3  # channels, classes


def features(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, A, H // s, W // s, generator=g) for s in STRIDES]


def test_anchors_equal_torchvision_anchor_generator():
    feats = features()
    tv = AnchorGenerator(tuple((s,) for s in SIZES), (tuple(RATIOS),) * len(SIZES))
    expected = tv(ImageList(torch.zeros(2, 3, H, W), [(H, W)] * 2), feats)[0]  # (N, 4)
    ours = AnchorGrid(STRIDES, SIZES, RATIOS)([f.shape[-2:] for f in feats], "cpu")
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("weights", [box_coder.RPN_WEIGHTS, box_coder.ROI_WEIGHTS])
def test_box_coder_equals_torchvision(weights):
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(50, 2, generator=g) * 200
    ref = torch.cat([ref, ref + 5 + torch.rand(50, 2, generator=g) * 100], 1)  # (50, 4)
    boxes = torch.rand(50, 2, generator=g) * 200
    boxes = torch.cat([boxes, boxes + 5 + torch.rand(50, 2, generator=g) * 100], 1)
    tv = BoxCoder(weights)
    torch.testing.assert_close(box_coder.encode(ref, boxes, weights), tv.encode_single(boxes, ref), atol=1e-4, rtol=1e-4)
    deltas = torch.randn(50, 4, generator=g)
    deltas[0, 2] = 20.0  # past the clamp
    torch.testing.assert_close(box_coder.decode(ref, deltas, weights), tv.decode_single(deltas, ref), atol=1e-4, rtol=1e-5)


def test_multilevel_roi_align_equals_multiscale_roi_align():
    feats = features()[:4]
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(2, 40, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 2 + torch.rand(2, 40, 2, generator=g) * 250], -1)  # (2, 40, 4): all four levels
    tv = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    expected = tv({str(i): f for i, f in enumerate(feats)}, list(boxes), [(H, W)] * 2)
    ours = restore_order(*MultiLevelRoIAlign(STRIDES[:4])(feats, boxes))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def detcli_head():
    torch.manual_seed(0)
    head = FasterRCNNHead(A, STRIDES, C, anchor_sizes=SIZES, aspect_ratios=RATIOS, fc_dim=64,
                          pre_nms_topk={"test": 300}, post_nms_topk={"test": 200})
    with torch.no_grad():  # weights that spread the scores (the init's are nearly all equal)
        head.rpn.cls_logits.weight.normal_(0, 0.3)
        head.rpn.bbox_pred.weight.normal_(0, 0.05)
        head.cls_score.weight.normal_(0, 0.2)
        head.bbox_pred.weight.normal_(0, 0.05)
    return head.eval()


def torchvision_twins(head: FasterRCNNHead):
    """torchvision's RegionProposalNetwork and RoIHeads with the head's weights and settings."""
    rpn_head = RPNHead(A, 3)
    rpn_head.load_state_dict({"conv.0.0.weight": head.rpn.conv.weight, "conv.0.0.bias": head.rpn.conv.bias,
                              "cls_logits.weight": head.rpn.cls_logits.weight, "cls_logits.bias": head.rpn.cls_logits.bias,
                              "bbox_pred.weight": head.rpn.bbox_pred.weight, "bbox_pred.bias": head.rpn.bbox_pred.bias})
    rpn = RegionProposalNetwork(AnchorGenerator(tuple((s,) for s in SIZES), (tuple(RATIOS),) * 5), rpn_head,
                                0.7, 0.3, 256, 0.5, {"training": 2000, "testing": 300},
                                {"training": 1000, "testing": 200}, 0.7)
    box_head = TwoMLPHead(A * 49, 64)
    box_head.load_state_dict({"fc6.weight": head.box_head[1].weight, "fc6.bias": head.box_head[1].bias,
                              "fc7.weight": head.box_head[3].weight, "fc7.bias": head.box_head[3].bias})
    predictor = FastRCNNPredictor(64, C + 1)  # torchvision: background is class 0, with its own deltas
    w, b = head.cls_score.weight, head.cls_score.bias
    predictor.load_state_dict({
        "cls_score.weight": torch.cat([w[C:], w[:C]]), "cls_score.bias": torch.cat([b[C:], b[:C]]),
        "bbox_pred.weight": torch.cat([torch.zeros(4, 64), head.bbox_pred.weight]),
        "bbox_pred.bias": torch.cat([torch.zeros(4), head.bbox_pred.bias]),
    })
    roi_heads = RoIHeads(MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2), box_head, predictor, 0.5, 0.5, 512, 0.25,
                         None, 0.05, 0.5, 100)
    return rpn.eval(), roi_heads.eval()


def sorted_rows(x):
    """Rows in lexicographic order, so that two sets compare regardless of order."""
    for col in reversed(range(x.shape[1])):
        x = x[x[:, col].argsort(stable=True)]
    return x


@torch.no_grad()
def test_proposals_and_detections_equal_torchvision():
    head = detcli_head()
    rpn, roi_heads = torchvision_twins(head)
    feats = features()
    sizes = [(256, 200), (230, 256)]  # the content of each padded 256 x 256 input: clipping differs
    images = ImageList(torch.zeros(2, 3, H, W), sizes)
    feat_dict = {str(i): f for i, f in enumerate(feats)}
    tv_proposals, _ = rpn(images, feat_dict)
    tv_dets, _ = roi_heads({k: feat_dict[k] for k in "0123"}, tv_proposals, sizes)

    preds = head(feats, image_sizes=torch.tensor(sizes))
    dets = FasterRCNNPostprocess(C)(preds, torch.tensor(sizes))
    for b in range(2):
        ours = preds["rois"][b][preds["roi_valid"][b]]
        assert len(ours) == len(tv_proposals[b]) == 200
        torch.testing.assert_close(sorted_rows(ours), sorted_rows(tv_proposals[b]), atol=1e-3, rtol=0)
        keep = dets["labels"][b] >= 0
        ours = torch.cat([dets["boxes"][b][keep], dets["scores"][b][keep, None], dets["labels"][b][keep, None] + 1.0], 1)
        theirs = torch.cat([tv_dets[b]["boxes"], tv_dets[b]["scores"][:, None], tv_dets[b]["labels"][:, None].float()], 1)
        assert len(ours) == len(theirs) > 10
        torch.testing.assert_close(sorted_rows(ours), sorted_rows(theirs), atol=1e-3, rtol=0)


def test_multilevel_roi_align_gradient_equals_multiscale_roi_align():
    """The channel-parallel CPU backward gives torchvision's feature gradients."""
    feats = [f.requires_grad_() for f in features()[:4]]
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(2, 30, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 2 + torch.rand(2, 30, 2, generator=g) * 250], -1)
    weights = torch.randn(60, A, 7, 7, generator=g)
    tv = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    expected = torch.autograd.grad((tv({str(i): f for i, f in enumerate(feats)}, list(boxes), [(H, W)] * 2)
                                    * weights).sum(), feats)
    got = torch.autograd.grad((restore_order(*MultiLevelRoIAlign(STRIDES[:4])(feats, boxes)) * weights).sum(), feats)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@torch.no_grad()
def test_whole_model_equals_torchvision_faster_rcnn_with_shared_weights():
    """`detcli` Faster R-CNN (timm resnet18, FPN with max-pooled P6, RPN, RoI head, postprocess) against
    torchvision's FasterRCNN (its transform, resnet18 + FPN extractor, RPN, RoIHeads) holding the same weights,
    as scripts/bench_*.py compare them: the same detections from 0-255 images (1e-3 px, 1e-4 in score)."""
    from benchkit.common import compose_model
    from benchkit.torchvision_models import share_faster_rcnn_weights, torchvision_faster_rcnn

    torch.manual_seed(0)
    ours, _ = compose_model(["backbone=resnet18", "head=faster_rcnn"], num_classes=C)
    with torch.no_grad():  # spread the scores (the init's are nearly all equal)
        ours.head.rpn.cls_logits.weight.normal_(0, 0.3)
        ours.head.cls_score.weight.normal_(0, 0.05)
        ours.head.bbox_pred.weight.normal_(0, 0.05)
    ours.eval()
    theirs = torchvision_faster_rcnn("resnet18", 128, C)
    share_faster_rcnn_weights(theirs, ours)
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    dets, tv_dets = ours(images), theirs.eval()(list(images.float() / 255))
    for b in range(2):
        keep = dets["labels"][b] >= 0
        mine = torch.cat([dets["boxes"][b][keep], dets["scores"][b][keep, None], dets["labels"][b][keep, None] + 1.0], 1)
        tv = torch.cat([tv_dets[b]["boxes"], tv_dets[b]["scores"][:, None], tv_dets[b]["labels"][:, None].float()], 1)
        assert len(mine) == len(tv) > 10
        torch.testing.assert_close(sorted_rows(mine), sorted_rows(tv), atol=1e-3, rtol=1e-4)

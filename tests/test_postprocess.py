"""Batched decoding + NMS against torchvision.ops.batched_nms per image."""

import torch
from torchvision.ops import batched_nms

from detcli.models.postprocess import FCOSPostprocess, nms_topk


def test_nms_keeps_images_and_classes_apart():
    box = [10.0, 10.0, 50.0, 50.0]
    near = [12.0, 12.0, 52.0, 52.0]
    boxes = torch.tensor([[box, near, near], [box, near, [0, 0, 5, 5]]])
    scores = torch.tensor([[0.9, 0.8, 0.7], [0.6, 0.5, -1.0]])  # -1: an invalid candidate
    labels = torch.tensor([[0, 0, 1], [0, 0, 0]])
    out = nms_topk(boxes, scores, labels, iou=0.5, max_det=3, num_classes=2)
    # image 0: the 0.8 box is suppressed by the 0.9 box of its class; the class-1 box stays
    assert out["scores"][0].tolist() == [0.8999999761581421, 0.699999988079071, 0.0]
    assert out["labels"][0].tolist() == [0, 1, -1]
    # image 1 is not suppressed by image 0's boxes; its invalid candidate never comes back
    assert torch.allclose(out["scores"][1], torch.tensor([0.6, 0.0, 0.0]))
    assert out["labels"][1].tolist() == [0, -1, -1]
    assert (out["boxes"][1, 1:] == 0).all()


def test_matches_torchvision_batched_nms_per_image():
    g = torch.Generator().manual_seed(0)
    B, K = 3, 200
    xy = torch.rand(B, K, 2, generator=g) * 100
    wh = torch.rand(B, K, 2, generator=g) * 40 + 2
    boxes = torch.cat([xy, xy + wh], -1)
    scores = torch.rand(B, K, generator=g)
    labels = torch.randint(0, 4, (B, K), generator=g)
    out = nms_topk(boxes, scores, labels, iou=0.5, max_det=50, num_classes=4)
    for i in range(B):
        keep = batched_nms(boxes[i], scores[i], labels[i], 0.5)[:50]
        n = len(keep)
        torch.testing.assert_close(out["boxes"][i, :n], boxes[i, keep])
        torch.testing.assert_close(out["scores"][i, :n], scores[i, keep])
        assert torch.equal(out["labels"][i, :n], labels[i, keep])


def test_fcos_decoding_clips_thresholds_and_pads():
    # one level of 2x2 points at stride 16, two classes
    points = torch.tensor([[8.0, 8.0], [24.0, 8.0], [8.0, 24.0], [24.0, 24.0]])
    cls = torch.full((1, 4, 2), -10.0)
    cls[0, 0, 1] = 10.0  # point 0, class 1: score ~ sqrt(1 * sigmoid(ctr))
    ctr = torch.full((1, 4), 10.0)
    reg = torch.tensor([[[20.0, 5.0, 6.0, 7.0]] * 4])
    post = FCOSPostprocess(num_classes=2, score_thresh=0.05, max_det=3)
    out = post({"cls_logits": cls, "bbox_reg": reg, "centerness": ctr, "points": points, "strides": None,
                "level_sizes": [4]}, torch.tensor([[32, 32]]))
    assert out["labels"][0].tolist() == [1, -1, -1]
    torch.testing.assert_close(out["boxes"][0, 0], torch.tensor([0.0, 3.0, 14.0, 15.0]))  # x1 clipped to 0
    assert out["scores"][0, 0] > 0.99 and (out["scores"][0, 1:] == 0).all()

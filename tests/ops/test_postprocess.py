"""Batched decoding + NMS against torchvision.ops.batched_nms per image; box voting, eager and in ONNX."""

import pytest
import torch
from torchvision.ops import batched_nms

from detcli.models.heads.fcos import FCOSPostprocess
from detcli.ops.nms import nms_topk


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


def test_box_voting_averages_the_overlapping_candidates_of_the_class():
    kept, near, far = [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 19.0]
    # the 0.9 box is kept; the 0.5 box (IoU 100/120 with it) votes; the class-1 box at the same place, the
    # far box (IoU 0.5 < 0.6) and the invalid candidate (-1) do not
    boxes = torch.tensor([[kept, near, near, far, near]])
    scores = torch.tensor([[0.9, 0.5, 0.8, 0.4, -1.0]])
    labels = torch.tensor([[0, 0, 1, 0, 0]])
    plain = nms_topk(boxes, scores, labels, iou=0.9, max_det=3, num_classes=2)
    voted = nms_topk(boxes, scores, labels, iou=0.9, max_det=3, num_classes=2, vote_iou=0.6)
    assert voted["labels"].tolist() == plain["labels"].tolist() == [[0, 1, 0]]  # kept: 0.9, 0.8 (class 1), 0.5
    torch.testing.assert_close(voted["scores"], plain["scores"])  # voting moves boxes, never scores
    w_kept, w_near = 1.0 * 0.9, (100 / 120) * 0.5  # IoU x score
    y2 = (w_kept * 10 + w_near * 12) / (w_kept + w_near)  # 10.633
    torch.testing.assert_close(voted["boxes"][0, 0], torch.tensor([0.0, 0.0, 10.0, y2]))
    # the class-1 box has no other candidate of its class: unchanged
    torch.testing.assert_close(voted["boxes"][0, 1], torch.tensor(near))
    # the kept 0.5 box (NMS at 0.9 let it through) is pulled towards the 0.9 box and the far box (IoU 120/190)
    w = torch.tensor([(100 / 120) * 0.9, 1.0 * 0.5, (120 / 190) * 0.4])
    ys = torch.tensor([10.0, 12.0, 19.0])
    torch.testing.assert_close(voted["boxes"][0, 2], torch.tensor([0.0, 0.0, 10.0, float((w * ys).sum() / w.sum())]))
    # under bf16 autocast (training-time evaluation, predict) the coordinates stay fp32-exact
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = nms_topk(boxes * 20, scores, labels, iou=0.9, max_det=3, num_classes=2, vote_iou=0.6)
    torch.testing.assert_close(auto["boxes"], voted["boxes"] * 20)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_box_voting_exports_to_onnx_as_it_runs(tmp_path):
    import onnxruntime

    class Post(torch.nn.Module):
        def forward(self, boxes, scores, labels):
            out = nms_topk(boxes, scores, labels, iou=0.5, max_det=20, num_classes=3, vote_iou=0.6)
            return out["boxes"], out["scores"], out["labels"]

    g = torch.Generator().manual_seed(0)
    B, K = 2, 60
    xy = torch.rand(B, K, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(B, K, 2, generator=g) * 20 + 5], -1)
    scores = torch.rand(B, K, generator=g)
    scores[:, ::7] = -1.0  # invalid candidates
    labels = torch.randint(0, 3, (B, K), generator=g)
    path = tmp_path / "post.onnx"
    torch.onnx.export(Post(), (boxes, scores, labels), str(path), input_names=["boxes", "scores", "labels"],
                      output_names=["b", "s", "l"], opset_version=17, dynamo=False)
    got = onnxruntime.InferenceSession(str(path)).run(None, {"boxes": boxes.numpy(), "scores": scores.numpy(),
                                                              "labels": labels.numpy()})
    ref = Post()(boxes, scores, labels)
    assert ref[2].tolist() == got[2].tolist()
    torch.testing.assert_close(torch.from_numpy(got[0]), ref[0], rtol=1e-5, atol=1e-4)
    plain = nms_topk(boxes, scores, labels, iou=0.5, max_det=20, num_classes=3)
    assert not torch.allclose(plain["boxes"], ref[0])  # voting moved some boxes

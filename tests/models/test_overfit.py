"""Every head really learns: a few images are fitted to near-perfect detections."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

from detcli.build import build_model
from detcli.config import config_dir
from detcli.data.collate import collate

STEPS = {"fcos": 80, "yolox": 80, "faster_rcnn": 120}  # both of Faster R-CNN's stages halve their losses by 120


@pytest.mark.parametrize("head", list(STEPS))
def test_head_overfits_four_images(head, cache_dir):
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", ["experiment=toy", f"head={head}", "data.num_train=32", "data.num_val=8", "data.hflip=0"])
    data = instantiate(cfg.data)
    ds = data.dataset("train")
    batch = collate([ds[i] for i in range(4)])
    model = build_model(cfg, data.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    targets = {"boxes": batch["boxes"], "labels": batch["labels"]}
    model.train()
    first = None
    for _ in range(STEPS[head]):
        losses = model(batch["images"], targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else {k: v.item() for k, v in losses.items()}
    assert loss.item() < 0.5 * sum(first.values())
    if head == "faster_rcnn":  # both stages learn: the RPN's terms and the box head's classification
        # (its box term starts near 0: the sampled RoIs include the gt boxes themselves)
        for name in ("loss_rpn_cls", "loss_rpn_box", "loss_cls"):
            assert losses[name].item() < 0.5 * first[name], (name, first[name], losses[name].item())
    model.eval()
    with torch.no_grad():
        dets = model(batch["images"], image_sizes=batch["image_sizes"])
    metric = MeanAveragePrecision(box_format="xyxy", backend="faster_coco_eval")
    preds = [{"boxes": b[lab >= 0], "scores": s[lab >= 0], "labels": lab[lab >= 0]}
             for b, s, lab in zip(dets["boxes"], dets["scores"], dets["labels"])]
    gts = [{"boxes": b[lab >= 0], "labels": lab[lab >= 0]} for b, lab in zip(batch["boxes"], batch["labels"])]
    metric.update(preds, gts)
    assert metric.compute()["map_50"] > 0.9
    if head == "faster_rcnn":  # the RPN alone: every gt box has a proposal that overlaps it by IoU >= 0.7
        with torch.no_grad():
            out = model.predict(batch["images"], batch["image_sizes"])
        for rois, valid, boxes, labels in zip(out["rois"], out["roi_valid"], batch["boxes"], batch["labels"]):
            iou = box_iou(boxes[labels >= 0], rois[valid])  # (M, P)
            assert (iou.amax(1) >= 0.7).all(), iou.amax(1)

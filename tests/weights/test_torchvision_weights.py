"""weights=torchvision:... without internet: torchvision's FCOS and Faster R-CNN with random weights are saved where
torchvision's weights API looks for the COCO files (the hub cache under $TORCH_HOME, the official file names);
detcli loaded through `torchvision:<WeightsEnum>` gives torchvision's detections (boxes within 1e-3 px, the same
scores and labels) in PyTorch, through `detcli predict` / `eval`, and through the exported ONNX graph."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY, detcli
from torchvision.io import write_png
from torchvision.models.detection import (
    FasterRCNN_ResNet50_FPN_Weights,
    FCOS_ResNet50_FPN_Weights,
    fasterrcnn_resnet50_fpn,
    fcos_resnet50_fpn,
)

from detcli.build import load_model
from detcli.errors import ConfigError

H, W = 256, 384  # a multiple of 128: torchvision's anchors of P6 / P7 sit at the nominal strides there
BUILDERS = {"fcos": (fcos_resnet50_fpn, FCOS_ResNet50_FPN_Weights.COCO_V1),
            "faster_rcnn": (fasterrcnn_resnet50_fpn, FasterRCNN_ResNet50_FPN_Weights.COCO_V1)}
# torchvision's own score thresholds, which detcli's architecture config carries too
THRESH = {"fcos": 0.2, "faster_rcnn": 0.05}


def spec(head: str) -> str:
    return f"torchvision:{type(BUILDERS[head][1]).__name__}.COCO_V1"


def random_coco_file(head: str, folder: Path) -> Path:
    """torchvision's network with random weights whose outputs spread (BatchNorm statistics, larger class and
    box layers than its initialisation), saved as its COCO file would be (FrozenBatchNorm: no batch counts)."""
    torch.manual_seed(0)
    builder, weights = BUILDERS[head]
    model = builder(weights=None, weights_backbone=None, num_classes=91)
    g = torch.Generator().manual_seed(1)
    for name, value in model.state_dict().items():
        if name.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=g) * 0.5 + 0.75)
        elif name.endswith("running_mean"):
            value.copy_(torch.randn(value.shape, generator=g) * 0.1)
        elif name.endswith("bn3.weight"):  # small residual branches: activations of a trained network's size
            value.copy_(torch.rand(value.shape, generator=g) * 0.2)
    if head == "fcos":
        torch.nn.init.normal_(model.head.classification_head.cls_logits.weight, std=0.05, generator=g)
    else:
        torch.nn.init.normal_(model.rpn.head.cls_logits.weight, std=0.1, generator=g)
        torch.nn.init.normal_(model.rpn.head.bbox_pred.weight, std=0.02, generator=g)
        torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=1.0, generator=g)
        torch.nn.init.normal_(model.roi_heads.box_predictor.bbox_pred.weight, std=0.01, generator=g)
    path = folder / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return path


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """$TORCH_HOME/hub holding both COCO files (random weights), and two 256 x 384 images."""
    home = tmp_path_factory.mktemp("torch_home")
    files = {head: random_coco_file(head, home / "hub") for head in BUILDERS}
    images = home / "images"
    images.mkdir()
    g = torch.Generator().manual_seed(2)
    for i in range(2):
        image = (torch.rand(3, H // 8, W // 8, generator=g) * 255)
        image = torch.nn.functional.interpolate(image[None], size=(H, W), mode="bilinear")[0]
        image = (image + torch.randint(0, 40, (3, H, W), generator=g)).clamp(0, 255).to(torch.uint8)
        write_png(image, str(images / f"img{i}.png"))
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield {"home": home, "files": files, "images": images}
    if old is None:
        os.environ.pop("TORCH_HOME")
    else:
        os.environ["TORCH_HOME"] = old


def torchvision_detections(head: str, images: Path) -> dict[str, dict]:
    """torchvision's model, loaded through its weights API from the hub cache: detections per file name."""
    builder, weights = BUILDERS[head]
    model = builder(weights=weights, min_size=H, max_size=W).eval()
    out = {}
    with torch.no_grad():
        for path in sorted(images.glob("*.png")):
            from torchvision.io import read_image

            d = model([read_image(str(path)).float() / 255])[0]
            out[path.name] = {"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"]}
    return out


def assert_same(ref: dict, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> None:
    """The same detections: as many, each with the same label, its score within 1e-4 and its box within 1e-3 px
    (matched one to one: two detections whose scores tie within rounding may come in either order)."""
    assert len(boxes) == len(ref["boxes"]) > 0
    free = torch.ones(len(boxes), dtype=torch.bool)
    for box, score, label in zip(ref["boxes"], ref["scores"], ref["labels"]):
        diff = (boxes - box).abs().amax(1)  # (N,)
        ok = free & (labels == label) & ((scores - score).abs() < 1e-4)
        assert ok.any(), f"no detection of label {int(label)} at score {float(score):.5f}"
        j = int(torch.where(ok, diff, torch.full_like(diff, float("inf"))).argmin())
        assert diff[j] < 1e-3, f"box {box.tolist()} vs {boxes[j].tolist()}"
        free[j] = False


def read_results(path: Path, key: str) -> dict[str, tuple]:
    """predictions.json / detections.json -> per image (boxes x1y1x2y2, scores, COCO category ids)."""
    out: dict[str, list] = {}
    for r in json.loads(path.read_text()):
        out.setdefault(r[key], []).append(r)
    as_tensors = {}
    for name, rows in out.items():
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rows)])
        as_tensors[name] = (boxes, torch.tensor([r["score"] for r in rows]), torch.tensor([r["category_id"] for r in rows]))
    return as_tensors


@pytest.mark.parametrize("head", list(BUILDERS))
def test_load_model_gives_torchvision_detections(hub, head):
    """In PyTorch: the Detector loaded through weights=torchvision:... against torchvision's model."""
    model, cfg, meta, _ = load_model(spec(head), "cpu")
    assert cfg.postprocess.score_thresh == THRESH[head]
    from torchvision.io import read_image

    ref = torchvision_detections(head, hub["images"])
    cat_ids = torch.tensor(meta["cat_ids"])
    with torch.no_grad():
        for name, r in ref.items():
            d = model(read_image(str(hub["images"] / name))[None].float())
            keep = d["labels"][0] >= 0
            assert_same(r, d["boxes"][0][keep], d["scores"][0][keep], cat_ids[d["labels"][0][keep]])


@pytest.mark.slow  # a ResNet-50 through the CLI (make test-all); test_load_model_* holds the same in process
def test_predict_cli_gives_torchvision_detections(hub, tmp_path):
    head = "fcos"
    detcli("predict", f"weights={spec(head)}", f"source={hub['images']}", f"image_size=[{H},{W}]", "precision=fp32",
           f"predict.score_thresh={THRESH[head]}", "save_images=false", f"hydra.run.dir={tmp_path}")
    got = read_results(tmp_path / "predictions.json", "file_name")
    for name, r in torchvision_detections(head, hub["images"]).items():
        assert_same(r, *got[str(hub["images"] / name)])


def coco_val_set(hub, folder: Path) -> Path:
    """The two images as a COCO val set of person and car (COCO's ids 1 and 3)."""
    images = [{"id": i + 1, "file_name": f"img{i}.png", "width": W, "height": H} for i in range(2)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": [1, 3][i], "bbox": [40, 30, 120, 90], "area": 10800,
             "iscrowd": 0} for i in range(2)]
    ann = folder / "val.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}))
    return ann


@pytest.mark.slow
@pytest.mark.parametrize("head", list(BUILDERS))
def test_eval_and_onnx_give_torchvision_detections(hub, head, tmp_path):
    """`detcli eval weights=...` on a COCO set of the same images (detections.json), and the graph of
    `detcli export weights=...` run by `detcli predict predict.backend=onnx`."""
    ref = torchvision_detections(head, hub["images"])
    ann = coco_val_set(hub, tmp_path)
    detcli("eval", f"weights={spec(head)}", "data=coco", f"data.val_ann={ann}", f"data.val_images={hub['images']}",
           f"data.image_size=[{H},{W}]", "data.num_workers=0", "precision=fp32", "plots=false", "worst=0",
           f"hydra.run.dir={tmp_path / 'eval'}")
    got = read_results(tmp_path / "eval" / "detections.json", "image_id")
    for i, r in enumerate(ref.values()):
        assert_same(r, *got[i + 1])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["weights"] == spec(head) and metrics["images"] == 2
    detcli("export", f"weights={spec(head)}", "format=onnx", f"image_size=[{H},{W}]", "export.dynamic=true",
           f"hydra.run.dir={tmp_path / 'export'}")
    detcli("predict", "predict.backend=onnx", f"predict.onnx={tmp_path / 'export' / 'model.onnx'}",
           f"source={hub['images']}", f"predict.score_thresh={THRESH[head]}", "save_images=false",
           f"hydra.run.dir={tmp_path / 'onnx'}")
    got = read_results(tmp_path / "onnx" / "predictions.json", "file_name")
    for name, r in ref.items():
        assert_same(r, *got[str(hub["images"] / name)])


@pytest.mark.slow  # a ResNet-50 FCOS trained through the CLI (make test-all); test_transfer.py holds the rules
def test_finetune_from_torchvision_weights_with_other_classes(hub, tmp_path, cache_dir):
    """detcli train weights=<a local copy of the COCO file> on the toy set (other classes): everything but the
    class rows is loaded, the class rows re-initialised, said in the log and in weights.json."""
    run = tmp_path / "run"
    proc = detcli("train", "experiment=finetune_fcos_r50", f"weights={hub['files']['fcos']}", "data=toy",
                  "data.num_train=8", "data.num_val=4", "data.batch_size=4", "data.num_workers=0", "data.image_size=128",
                  "trainer.max_steps=2", "trainer.report=false", f"hydra.run.dir={run}")
    summary = json.loads((run / "weights.json").read_text())
    assert summary["missing"] == [] and summary["skipped"] == []
    assert summary["kept_classes"] == [] and len(summary["reinitialised_classes"]) > 0
    assert summary["loaded"] == sum(1 for k in torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
                                    if not k.endswith("num_batches_tracked"))
    assert "class rows kept for 0 classes" in proc.stderr + proc.stdout


def test_weights_of_another_network_are_refused(hub, tmp_path, cache_dir):
    proc = detcli("train", *TINY, f"weights={spec('fcos')}", "trainer.max_steps=1", f"hydra.run.dir={tmp_path}",
                  check=False)
    assert proc.returncode != 0
    text = proc.stderr + proc.stdout
    assert "backbone.name=resnet50" in text and "head.point_offset=0.5" in text and "finetune_fcos_r50" in text


def test_an_offline_machine_is_told_where_the_file_goes(tmp_path, monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match="fcos_resnet50_fpn_coco-99b0c9b7.pth") as e:
        load_model(spec("fcos"), "cpu")
    assert str(tmp_path) in str(e.value) and "TORCH_HOME" in str(e.value)

"""predict and export on non-square images: boxes in original pixels, the dataset's image ids, and an
ONNX model fed as its `.json` sidecar says agreeing with `detcli predict` (letterbox and keep-ratio)."""

import json

import numpy as np
import pytest
import torch
from conftest import detcli
from PIL import Image
from torchvision.transforms.v2 import functional as F

from detcli.build import load_model
from detcli.checkpoint import load_checkpoint, save_checkpoint

# crops of toy images (h0, h1, w0, w1), upscaled 1.5x: 108 x 192 and 192 x 120
CROPS = {"wide.png": (20, 92, 0, 128), "tall.png": (0, 128, 30, 110)}


@pytest.fixture(scope="module")
def images(trained_run, cache_dir, tmp_path_factory):
    """A folder of two non-square images with a COCO json naming them (ids 501, 502), plus one image
    the json does not know."""
    root = tmp_path_factory.mktemp("nonsquare")
    val = sorted((next(cache_dir.glob("toy_*_n32_*")) / "val").glob("*.jpg"))
    for k, (name, (h0, h1, w0, w1)) in enumerate(CROPS.items()):
        crop = Image.open(val[k]).convert("RGB").crop((w0, h0, w1, h1))
        crop.resize((crop.width * 3 // 2, crop.height * 3 // 2), Image.BILINEAR).save(root / name)
    Image.open(root / "wide.png").transpose(Image.FLIP_LEFT_RIGHT).save(root / "unknown.png")
    entries = [{"id": 501 + k, "file_name": name, "width": Image.open(root / name).width,
                "height": Image.open(root / name).height} for k, name in enumerate(CROPS)]
    (root / "ann.json").write_text(json.dumps({"images": entries, "annotations": [], "categories": []}))
    return root


@pytest.fixture(scope="module", params=[False, True], ids=["resize", "letterbox"])
def checkpoint(request, trained_run, tmp_path_factory):
    """The toy checkpoint, with data.letterbox as the parameter says."""
    ckpt = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    ckpt["config"]["data"]["letterbox"] = request.param
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def predicted(checkpoint, images, tmp_path_factory):
    """predict's detections per file name, and its log."""
    out = tmp_path_factory.mktemp("pred")
    proc = detcli("predict", f"checkpoint={checkpoint}", f"source={images}", f"predict.ann={images}/ann.json",
                  "predict.score_thresh=0.0", "save_images=false", f"hydra.run.dir={out}")
    by_file = {}
    for p in json.loads((out / "predictions.json").read_text()):
        by_file.setdefault(p["file_name"].rsplit("/", 1)[-1], []).append(p)
    return by_file, proc.stderr + proc.stdout


def as_json_says(image: torch.Tensor, spec: dict) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(1, 3, H, W) float input, the (4,) x, y, x, y scale and the resized (h', w'), following the
    sidecar's words: longer side to N, shorter floor(N * short / long), bilinear; pad right and bottom."""
    h, w = image.shape[-2:]
    n = spec["resize"]["image_size"]
    short = int(n * min(h, w) / max(h, w))
    h2, w2 = (n, short) if h > w else (short, n)
    x = torch.tensor(spec["pad"]["value"], dtype=torch.float32).view(3, 1, 1).repeat(
        1, spec["input"]["height"], spec["input"]["width"])
    x[:, :h2, :w2] = F.resize(image, [h2, w2], antialias=True).float()
    return x[None], torch.tensor([w2 / w, h2 / h, w2 / w, h2 / h]), (h2, w2)


def to_original(boxes: np.ndarray, scale: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Divide by the scale, clip to the original image, as the sidecar says."""
    out = torch.from_numpy(boxes) / scale
    return torch.minimum(out.clamp(min=0), torch.tensor([w, h, w, h], dtype=out.dtype))


def assert_agree(pred: list[dict], boxes: torch.Tensor, scores: np.ndarray, labels: np.ndarray,
                 cat_ids: list[int], top: int = 10) -> None:
    """predict's best `top` detections each have a twin (same class, score within 1e-3, box within 1 px)."""
    best = sorted(pred, key=lambda p: -p["score"])[:top]
    assert best, "predict found something"
    for p in best:
        x, y, bw, bh = p["bbox"]
        twins = [float((b - torch.tensor([x, y, x + bw, y + bh])).abs().max()) for b, s, lab in
                 zip(boxes, scores, labels) if lab >= 0 and cat_ids[lab] == p["category_id"]
                 and abs(s - p["score"]) < 1e-3]
        assert twins and min(twins) <= 1.0, (p, twins)


def read(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1)  # (3, h, w) uint8


def test_predict_boxes_are_in_original_pixels(checkpoint, images, predicted):
    """predict's boxes are the model's on the letterboxed / resized image, mapped back by hand."""
    by_file, _ = predicted
    model, cfg, meta, _ = load_model(str(checkpoint), "cpu")
    n = int(cfg.data.image_size)
    spec = {"resize": {"image_size": n}, "pad": {"value": [124, 116, 104]}, "input": {"height": n, "width": n}}
    for name in CROPS:
        image = read(images / name)
        x, scale, (h2, w2) = as_json_says(image, spec)  # without letterbox too: a tall and a wide
        with torch.no_grad():  # image share predict's batch, so it is padded to the square as well
            dets = model(x, image_sizes=torch.tensor([[h2, w2]]))
        h, w = image.shape[-2:]
        for p in by_file[name]:
            x1, y1, bw, bh = p["bbox"]
            assert 0 <= x1 and 0 <= y1 and x1 + bw <= w + 1e-3 and y1 + bh <= h + 1e-3
        assert_agree(by_file[name], to_original(dets["boxes"][0].numpy(), scale, h, w), dets["scores"][0].numpy(),
                     dets["labels"][0].numpy(), meta["cat_ids"])


def test_predict_uses_the_dataset_ids(predicted):
    by_file, log = predicted
    assert {p["image_id"] for p in by_file["wide.png"]} == {501}
    assert {p["image_id"] for p in by_file["tall.png"]} == {502}
    assert {p["image_id"] for p in by_file["unknown.png"]} == {503}  # after the largest, with a warning
    assert "not in the annotation file" in log and "unknown.png" in log


def test_onnx_fed_as_the_sidecar_says_matches_predict(checkpoint, images, predicted, tmp_path):
    from detcli.deploy.ort import inference_session

    by_file, _ = predicted
    detcli("export", f"checkpoint={checkpoint}", "format=onnx", f"hydra.run.dir={tmp_path}")
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    spec = sidecar["preprocess"]
    assert spec["letterbox"] == load_checkpoint(checkpoint)["config"]["data"]["letterbox"]
    assert spec["pad"]["value"] == [124, 116, 104] and spec["input"]["height"] == spec["input"]["width"] == 128
    session = inference_session(tmp_path / "model.onnx")
    for name in CROPS:
        image = read(images / name)
        x, scale, _ = as_json_says(image, spec)
        boxes, scores, labels = session.run(["boxes", "scores", "labels"], {"images": x.numpy()})
        h, w = image.shape[-2:]
        assert_agree(by_file[name], to_original(boxes[0], scale, h, w), scores[0], labels[0], sidecar["cat_ids"])


def test_predict_ids_from_the_checkpoints_own_dataset(trained_run, cache_dir, tmp_path):
    """predict.ann=val: the ids of the checkpoint's val split (any data format), here the toy COCO json's."""
    root = next(cache_dir.glob("toy_*_n32_*"))
    detcli("predict", f"checkpoint={trained_run}/checkpoints/best.pt", f"source={root / 'val'}", "predict.ann=val",
           "predict.score_thresh=0.0", "predict.max_det=1", "save_images=false", f"hydra.run.dir={tmp_path}")
    expected = {img["file_name"]: img["id"] for img in json.loads((root / "val.json").read_text())["images"]}
    got = {p["file_name"].rsplit("/", 1)[-1]: p["image_id"] for p in
           json.loads((tmp_path / "predictions.json").read_text())}
    assert got == expected and min(got.values()) > 1  # not a counter

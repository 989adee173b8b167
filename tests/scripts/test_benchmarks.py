"""The benchmark scripts run end to end (tiny sizes) and write their JSON; the ultralytics peer is
optional (the `bench` extra) and kept offline, out of ~; the YOLO-format view of the accuracy set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
TINY = ["--size", "64", "--batch", "2", "--iters", "1", "--rounds", "1"]


def needs_yolox_and_ultralytics() -> None:
    pytest.importorskip("ultralytics")
    if not (ROOT / "configs" / "head" / "yolox.yaml").is_file():
        pytest.skip("head=yolox is not in this tree yet (configs/head/yolox.yaml)")


def ultralytics_files(home: Path) -> list[Path]:
    """What ultralytics left in `home` (detcli's own dependencies may write caches there: not counted)."""
    return [p for p in home.rglob("*") if "ultralytics" in p.name.lower()]


def run_script(script: str, *args: str, cwd: Path, home: Path, prelude: str = ""):
    """The script in a subprocess from `cwd`, with HOME an empty folder; `prelude` runs first."""
    home.mkdir(exist_ok=True)
    env = dict(os.environ)
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR"):  # all would move ~'s folders
        env.pop(name, None)
    # runpy puts no script folder on the import path: scripts/ goes on PYTHONPATH, for benchkit
    env.update(HOME=str(home), PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join(filter(None, [str(SCRIPTS), env.get("PYTHONPATH")])))
    run = "import runpy, sys\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')"
    return subprocess.run([sys.executable, "-c", f"{prelude}\n{run}", str(SCRIPTS / script), *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=900, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("script, args", [
    ("bench_train.py", ["--size", "64", "--batch", "2", "--iters", "1", "--rounds", "1"]),
    ("bench_infer.py", ["--size", "64", "--batch", "2", "--iters", "1", "--rounds", "1"]),
    ("bench_memory.py", ["--backbone", "resnet18", "--size", "64", "--batch", "1", "--iters", "1"]),
    ("bench_data.py", ["data.num_train=32", "data.num_val=8", "--workers", "0", "--batches", "2"]),
])
def test_benchmark_runs(script, args, tmp_path, cache_dir):
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("source", ["synthetic", "wheel"])
def test_accuracy_benchmark_runs(source, tmp_path):
    """before / after / torchvision on a few steps, never downloading: a generated stand-in for the
    deepforest wheel, or the real wheel where DETCLI_DEEPFOREST_WHEEL names it. The current tree stands
    in for the 'before' checkout, so no git worktree is made."""
    if source == "synthetic":
        data = ["--synthetic"]
    else:
        wheel = os.environ.get("DETCLI_DEEPFOREST_WHEEL", "")
        if not Path(wheel).is_file():
            pytest.skip("set DETCLI_DEEPFOREST_WHEEL to deepforest-2.1.0-py3-none-any.whl to run this case")
        data = ["--wheel", wheel]
    out = tmp_path / "out.json"
    args = [*data, "--runs", "before,after,torchvision", "--steps", "2", "--batch", "2", "--size", "64",
            "--workers", "0", "--device", "cpu",
            "--before-tree", str(ROOT), "--cache", str(tmp_path / "cache"),
            "--workdir", str(tmp_path / "runs"), "--out", str(out)]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_accuracy.py"), *args],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"before", "after", "torchvision"}
    assert set(result["comparisons"]) == {"after vs before", "after vs torchvision"}
    assert result["data"]["train"]["boxes"] > 0 and result["data"]["val"]["boxes"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("script", ["bench_train.py", "bench_infer.py"])
def test_yolox_against_ultralytics(script, tmp_path, cache_dir):
    """--head yolox measures ultralytics' YOLOv8n in the same run, its settings in the bench cache."""
    needs_yolox_and_ultralytics()
    proc = run_script(script, "--head", "yolox", *TINY, "--out", "out.json", cwd=tmp_path,
                      home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert {"detcli", "ultralytics"} <= set(result["img_per_s"])
    assert result["speedup_vs_ultralytics"] > 0
    assert "detcli / ultralytics YOLOv8n" in proc.stdout
    if script == "bench_infer.py":  # and the networks alone, without decode and NMS
        assert result["network_speedup_vs_ultralytics"] > 0
    assert (tmp_path / "runs/bench/cache/ultralytics/Ultralytics/settings.json").is_file()
    assert ultralytics_files(tmp_path / "home") == []


@pytest.mark.slow
def test_yolox_without_ultralytics(tmp_path, cache_dir):
    """Where ultralytics is missing, --head yolox says how to install it and measures detcli alone."""
    if not (ROOT / "configs" / "head" / "yolox.yaml").is_file():
        pytest.skip("head=yolox is not in this tree yet (configs/head/yolox.yaml)")
    proc = run_script("bench_train.py", "--head", "yolox", *TINY, "--out", "out.json", cwd=tmp_path,
                      home=tmp_path / "home", prelude="import sys; sys.modules['ultralytics'] = None")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pip install -e .[bench]" in proc.stdout
    result = json.loads((tmp_path / "out.json").read_text())
    assert set(result["img_per_s"]) == {"detcli", "trivial"} and result["speedup_vs_ultralytics"] is None


@pytest.mark.slow
def test_accuracy_yolox_and_ultralytics_runs(tmp_path, cache_dir):
    """The two new runs of bench_accuracy on the synthetic set, a few steps, scored and compared."""
    needs_yolox_and_ultralytics()
    args = ["--synthetic", "--runs", "yolox,ultralytics", "--steps", "2", "--batch", "2", "--size", "64",
            "--workers", "0", "--device", "cpu", "--cache", "cache", "--workdir", "runs", "--out", "out.json"]
    proc = run_script("bench_accuracy.py", *args, cwd=tmp_path, home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert set(result["runs"]) == {"yolox", "ultralytics"}
    assert set(result["comparisons"]) == {"yolox vs ultralytics"}
    assert "head=yolox" in result["runs"]["yolox"]["overrides"]
    theirs = result["runs"]["ultralytics"]
    assert 0 <= theirs["map"] <= 1 and theirs["batches"] >= 2 and theirs["optimizer_updates"] >= 1
    assert ultralytics_files(tmp_path / "home") == []


def test_load_ultralytics_missing(monkeypatch, capsys):
    from benchkit import common

    monkeypatch.setattr(common, "find_spec", lambda name: None)
    assert common.load_ultralytics() is None
    assert "pip install -e .[bench]" in capsys.readouterr().out


def test_ultralytics_batch_is_normalised_cxcywh():
    from benchkit.common import ultralytics_batch

    batch = {"images": torch.zeros(2, 3, 64, 128, dtype=torch.uint8),  # H 64, W 128
             "boxes": torch.tensor([[[8.0, 16, 24, 48]], [[0, 0, 128, 64]]]),  # (B, M, 4) x1y1x2y2
             "labels": torch.tensor([[3], [5]])}
    out = ultralytics_batch(batch)
    assert out["img"].dtype == torch.float32 and out["img"].shape == (2, 3, 64, 128)
    assert out["batch_idx"].tolist() == [0, 1] and out["cls"].tolist() == [[3], [5]]
    assert torch.allclose(out["bboxes"], torch.tensor([[0.125, 0.5, 0.125, 0.5], [0.5, 0.5, 1, 1]]))


@pytest.mark.parametrize("steps, n_train, batch, epochs", [(1200, 133, 8, 71), (2, 10, 2, 1), (10, 10, 2, 2),
                                                           (11, 10, 2, 3), (16, 9, 4, 6)])
def test_ultralytics_epochs_cover_the_steps(steps, n_train, batch, epochs):
    from benchkit.peers import ultralytics_epochs

    assert ultralytics_epochs(steps, n_train, batch) == epochs


def test_yolo_view(tmp_path):
    """Labels are class cx cy w h normalised by the image, classes in category-id order, crowd boxes
    left out; images are links to the COCO tiles, which stay as they were; a second call reuses it."""
    from benchkit.datasets import yolo_view

    coco = tmp_path / "coco"
    (coco / "images").mkdir(parents=True)
    Image.new("RGB", (20, 10)).save(coco / "images" / "a.png")
    categories = [{"id": 3, "name": "b"}, {"id": 1, "name": "a"}]
    anns = [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [2, 4, 6, 4], "area": 24, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 20, 10], "area": 200, "iscrowd": 1}]
    split = {"images": [{"id": 7, "file_name": "a.png", "width": 20, "height": 10}], "annotations": anns,
             "categories": categories}
    for name in ("train", "val"):
        (coco / f"{name}.json").write_text(json.dumps(split))
    (coco / "source.json").write_text("{}")
    before = {p: p.read_bytes() for p in coco.rglob("*") if p.is_file()}

    view = yolo_view(coco, tmp_path / "coco_yolo")
    for name in ("train", "val"):
        assert (view / "labels" / name / "a.txt").read_text() == "1 0.250000 0.600000 0.300000 0.400000\n"
        assert (view / "images" / name / "a.png").samefile(coco / "images" / "a.png")
    spec = yaml.safe_load((view / "data.yaml").read_text())
    assert spec == {"path": str(view.resolve()), "train": "images/train", "val": "images/val",
                    "names": {0: "a", 1: "b"}}
    assert {p: p.read_bytes() for p in coco.rglob("*") if p.is_file()} == before
    stamp = (view / "data.yaml").stat().st_mtime_ns
    assert yolo_view(coco, tmp_path / "coco_yolo") == view
    assert (view / "data.yaml").stat().st_mtime_ns == stamp


def _wall_clock_args(runs: str) -> list[str]:
    return ["--synthetic", "--wall-clock", "0.2", "--runs", runs, "--batch", "2", "--size", "64", "--workers", "0",
            "--device", "cpu", "--cache", "cache", "--workdir", "runs", "--out", "out.json"]


@pytest.mark.serial
def test_accuracy_at_equal_wall_clock_runs_a_preset_under_the_time_limit(tmp_path, cache_dir):
    """--wall-clock: a preset trains for the time (trainer.time_limit) and is scored once, at the end; --seed
    reaches it."""
    proc = run_script("bench_accuracy.py", *_wall_clock_args("yolox_cpu"), "--seed", "1", cwd=tmp_path,
                      home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads((tmp_path / "out.json").read_text())["runs"]["yolox_cpu"]
    assert {"experiment=yolox_cpu", "trainer.time_limit=0.2m", "seed=1"} <= set(run["overrides"])
    assert "backbone=resnet18" not in run["overrides"] and run["steps"] > 2 and 0 <= run["map"] <= 1
    ckpt = torch.load(Path(run["run_dir"]) / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    # the limit was applied (its 5 % precision is test_time_limit's; a 12 s run on a shared 2-core box drifts more)
    assert abs(ckpt["elapsed_s"] - 12) <= 0.15 * 12 and ckpt["step"] == run["steps"]
    assert "0.2 minutes each" in proc.stdout


@pytest.mark.slow
def test_accuracy_at_equal_wall_clock_against_ultralytics(tmp_path, cache_dir):
    needs_yolox_and_ultralytics()
    proc = run_script("bench_accuracy.py", *_wall_clock_args("yolox_nano,ultralytics"), cwd=tmp_path,
                      home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert set(result["comparisons"]) == {"yolox_nano vs ultralytics"}
    assert result["runs"]["ultralytics"]["epochs"] >= 1


@pytest.mark.slow  # a benchmark smoke run (make test-all), as the others here
@pytest.mark.parametrize("script", ["bench_train.py", "bench_infer.py"])
def test_faster_rcnn_against_torchvision(script, tmp_path, cache_dir):
    """--head faster_rcnn measures torchvision's FasterRCNN (same backbone, size, RPN and RoI settings) in
    the same run and prints the ratio (bench_infer.py: and the exported graph in onnxruntime and OpenVINO)."""
    proc = run_script(script, "--head", "faster_rcnn", "--size", "64", "--batch", "2", "--iters", "1",
                      "--rounds", "1", "--out", "out.json", cwd=tmp_path, home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert {"detcli", "torchvision"} <= set(result["img_per_s"]) and result["speedup_vs_torchvision"] > 0
    assert "detcli / torchvision" in proc.stdout
    if script == "bench_infer.py":  # the exported graph in onnxruntime and OpenVINO (the suite's precision: fp32)
        assert {"detcli onnxruntime", "detcli openvino fp32"} <= set(result["img_per_s"])
        assert result["openvino_fp32_vs_eager"] > 0 and result["openvino_fp32_vs_onnxruntime"] > 0


@pytest.mark.slow
def test_memory_of_freezing_and_checkpointing_faster_rcnn(tmp_path, cache_dir):
    proc = run_script("bench_memory.py", "--head", "faster_rcnn", "--backbone", "resnet18", "--size", "64",
                      "--batch", "1", "--iters", "1", "--freeze-at", "0", "2", "--out", "out.json", cwd=tmp_path,
                      home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert len(rows) == 8 and {r["freeze_at"] for r in rows} == {0, 2}


def test_bench_eval_prints_the_speed_ratio_and_agrees_with_pycocotools(tmp_path):
    pytest.importorskip("pycocotools")
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_eval.py"), "--images", "60", "--rounds", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["speedup"] > 0 and result["max_stat_diff"] <= 1e-4 and "speedup over pycocotools" in proc.stdout


@pytest.mark.slow
def test_bench_gpu_dry_run_runs_every_step_and_summarises(tmp_path, cache_dir):
    """scripts/bench_gpu.sh --dry-run: the GPU script's steps at toy sizes on the CPU, and its summary table."""
    out = tmp_path / "gpu"
    proc = subprocess.run(["bash", str(SCRIPTS / "bench_gpu.sh"), "--dry-run"], capture_output=True, text=True,
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, "PYTHONWARNINGS": "ignore"},
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu_dry_run" / "summary.json").read_text())
    runs = {r["run"] for r in summary["training"]}
    assert runs == {"fcos_fp32", "fcos_bf16", "fcos_bf16_cl", "yolox_bf16_cl", "faster_rcnn_bf16_cl"}
    assert all(r["detcli"] > 0 and r["tflops"] > 0 for r in summary["training"])
    assert {(r["head"], r["precision"]) for r in summary["memory"]} == {("faster_rcnn", "fp32"), ("faster_rcnn", "bf16")}
    assert summary["data"]["rows"][0]["img_per_s"] > 0
    assert "gradient checkpointing" in proc.stdout and "MFU" in proc.stdout


@pytest.mark.slow  # builds the benchmark set twice (make test-all)
def test_pasted_set_is_reproducible_held_out_and_checked(tmp_path):
    """benchkit/pasted.py from stand-ins for the skimage files (no network): ten classes, every box inside its
    256 px image, val on other backgrounds than train, the same bytes when built twice, and `detcli data check`
    passed (prepare_pasted runs it)."""
    from benchkit.datasets import synthetic_wheel
    from benchkit.pasted import BACKGROUNDS, CLASSES, prepare_pasted

    wheel = synthetic_wheel(tmp_path / "trees.whl", 400)
    first = prepare_pasted(tmp_path / "a", wheel, 24, 8, synthetic=True)
    second = prepare_pasted(tmp_path / "b", wheel, 24, 8, synthetic=True)
    assert first.name == "pasted_objects_synthetic_24"
    for split, count in (("train", 24), ("val", 8)):
        coco = json.loads((first / f"{split}.json").read_text())
        assert [c["name"] for c in coco["categories"]] == list(CLASSES) and len(coco["images"]) == count
        assert (first / f"{split}.json").read_bytes() == (second / f"{split}.json").read_bytes()
        assert all(1 <= sum(a["image_id"] == i["id"] for a in coco["annotations"]) <= 6 for i in coco["images"])
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 256 and y + h <= 256 and w > 0 and h > 0
        for image in coco["images"]:
            assert (first / "images" / image["file_name"]).read_bytes() == \
                (second / "images" / image["file_name"]).read_bytes()
    assert not set(BACKGROUNDS["train"]) & set(BACKGROUNDS["val"])
    assert prepare_pasted(tmp_path / "a", wheel, 24, 8, synthetic=True) == first  # cached: not built again


@pytest.mark.slow
def test_accuracy_benchmark_on_the_pasted_set(tmp_path, cache_dir):
    """--dataset pasted: a preset trains on the second set (synthetic stand-ins, a few images) and is scored."""
    args = _wall_clock_args("yolox_nano")
    args[args.index("--wall-clock") + 1] = "0.1"
    proc = run_script("bench_accuracy.py", *args, "--dataset", "pasted", "--pasted-images", "16", "8",
                      cwd=tmp_path, home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["data"]["path"].endswith("pasted_objects_synthetic_16") and result["data"]["val"]["tiles"] == 8
    assert 0 <= result["runs"]["yolox_nano"]["map"] <= 1 and "pasted objects" in proc.stdout


def test_coco_map_scores_an_iterator_of_pairs():
    """The peers' detections come as a zip or a generator of (detections, gt): scored as a list is."""
    from benchkit.peers import coco_map

    gts = [{"boxes": torch.tensor([[10.0, 10, 50, 50]]), "labels": torch.tensor([c]), "iscrowd": torch.tensor([0]),
            "area": torch.tensor([1600.0])} for c in (0, 3)]
    dets = [{"boxes": torch.tensor([[10.0, 10, 50, 50]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([c])}
            for c in (0, 3)]
    assert coco_map(zip(dets, gts))["map"] == pytest.approx(1.0)
    assert coco_map(pair for pair in zip(dets, gts)) == coco_map(list(zip(dets, gts)))

"""The CLI end to end in subprocesses, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import TINY, detcli


def test_help_lists_subcommands():
    out = detcli("--help").stdout
    for cmd in ("train", "eval", "predict", "export", "bench", "backbones"):
        assert f"  {cmd} " in out


def test_the_installed_console_script_runs_in_a_new_interpreter():
    """The suite's other CLI runs fork from a process that has imported detcli (tests/forked_cli.py); this one
    starts the `detcli` script pip installed, as a user's shell does."""
    script = Path(sys.executable).with_name("detcli")
    proc = subprocess.run([str(script), "train", "--cfg", "job", "experiment=toy"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "backbone:" in proc.stdout and "resnet10t" in proc.stdout


def test_train_help_shows_groups():
    out = detcli("train", "--help").stdout
    for group in ("backbone:", "head:", "neck:", "loss:", "data:", "trainer:", "experiment:"):
        assert group in out
    assert "resnet50" in out and "fcos" in out


def test_cfg_job_prints_the_composed_config():
    out = detcli("train", "head=fcos", "backbone=resnet50", "--cfg", "job").stdout
    assert "name: resnet50" in out and "FCOSHead" in out and "FPN" in out


def test_mistyped_key_exits_2_with_a_suggestion():
    proc = detcli("train", "trainer.max_stepz=1", check=False)
    assert proc.returncode == 2
    assert "trainer.max_steps" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_unknown_option_exits_2_with_a_suggestion():
    proc = detcli("train", "backbone=resnet5", check=False)
    assert proc.returncode == 2 and "backbone=resnet50" in proc.stderr


def test_unknown_subcommand_exits_2():
    proc = detcli("trian", check=False)
    assert proc.returncode == 2 and "train" in proc.stderr


def test_run_folder_has_the_promised_files(trained_run):
    assert (trained_run / "config.yaml").is_file()
    assert (trained_run / "checkpoints" / "last.pt").is_file() and (trained_run / "checkpoints" / "best.pt").is_file()
    logs = [json.loads(line) for line in (trained_run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [2, 4, 6]
    for key in ("step", "epoch", "loss", "loss_cls", "loss_box", "loss_ctr", "lr", "img_per_s"):
        assert key in logs[-1]
    evals = [json.loads(line) for line in (trained_run / "eval_log.jsonl").read_text().splitlines()]
    assert evals and set(evals[-1]) >= {"step", "epoch", "map", "map_50", "map_75", "map_small", "map_medium",
                                        "map_large"}
    ckpt = torch.load(trained_run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["meta"]["class_names"] == ["circle", "square", "triangle"]


def test_eval_rebuilds_from_the_checkpoint(trained_run, tmp_path):
    out = tmp_path / "eval"
    proc = detcli("eval", f"checkpoint={trained_run}/checkpoints/best.pt", f"hydra.run.dir={out}")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 8 and 0 <= metrics["map_50"] <= 1
    assert "map_50" in proc.stdout


def test_predict_writes_coco_results_and_images(trained_run, tmp_path, cache_dir):
    val = next(cache_dir.glob("toy_*_n32_*")) / "val"
    out = tmp_path / "pred"
    detcli("predict", f"checkpoint={trained_run}/checkpoints/best.pt", f"source={val}", "predict.score_thresh=0.0",
           f"hydra.run.dir={out}")
    preds = json.loads((out / "predictions.json").read_text())
    assert preds, "a score threshold of 0 keeps detections"
    p = preds[0]
    assert set(p) == {"file_name", "image_id", "category_id", "bbox", "score"} and p["category_id"] in (1, 2, 3)
    assert len(list((out / "images").iterdir())) == 8


def test_export_onnx_matches_pytorch(trained_run, tmp_path):
    out = tmp_path / "export"
    proc = detcli("export", f"checkpoint={trained_run}/checkpoints/best.pt", "format=onnx", "batch_size=2",
                  f"hydra.run.dir={out}")
    assert (out / "model.onnx").is_file() and "largest |box difference|" in proc.stdout
    from detcli.deploy.ort import inference_session

    session = inference_session(out / "model.onnx")
    boxes, scores, _labels = session.run(["boxes", "scores", "labels"], {"images": torch.rand(3, 3, 128, 128).numpy() * 255})
    assert boxes.shape == (3, 100, 4) and scores.shape == (3, 100)  # the batch axis is dynamic


def test_export_torchscript(trained_run, tmp_path):
    out = tmp_path / "ts"
    detcli("export", f"checkpoint={trained_run}/checkpoints/best.pt", "format=torchscript", f"hydra.run.dir={out}")
    assert (out / "model.torchscript.pt").is_file()


def test_eval_of_a_missing_checkpoint_names_it(tmp_path):
    proc = detcli("eval", f"checkpoint={tmp_path}/nope.pt", f"hydra.run.dir={tmp_path}/e", check=False)
    assert proc.returncode != 0 and "nope.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_multirun_sweeps_and_summarises(tmp_path, cache_dir):
    proc = detcli("train", "-m", *TINY, "trainer.max_steps=2", "trainer.optimizer.lr=0.001,0.01",
                  f"hydra.sweep.dir={tmp_path}/sweep")
    assert (tmp_path / "sweep" / "0" / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "sweep" / "1" / "checkpoints" / "last.pt").is_file()
    assert "trainer.optimizer.lr=0.001" in proc.stdout and "trainer.optimizer.lr=0.01" in proc.stdout
    rows = (tmp_path / "sweep" / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("job,status,overrides,best_map,map,map_50,wall_s,run_dir,error") and len(rows) == 3


def test_r50_composes_and_trains_two_steps(tmp_path, cache_dir):
    detcli("train", "head=fcos", "backbone=resnet50", "trainer.max_steps=2", "data.num_train=32", "data.num_val=8",
           "data.batch_size=4", "data.num_workers=0", "data.image_size=64", "trainer.ema.enabled=false",
           f"hydra.run.dir={tmp_path}/r50")
    assert Path(tmp_path / "r50" / "checkpoints" / "last.pt").is_file()


def test_predict_keeps_same_named_images_of_different_folders_apart(trained_run, tmp_path, cache_dir):
    val = next(cache_dir.glob("toy_*_n32_*")) / "val"
    src = tmp_path / "src"
    for cam in ("cam1", "cam2"):
        (src / cam).mkdir(parents=True)
        (src / cam / "0001.jpg").write_bytes(next(val.glob("*.jpg")).read_bytes())
    out = tmp_path / "pred"
    detcli("predict", f"checkpoint={trained_run}/checkpoints/best.pt", f"source={src}", f"hydra.run.dir={out}")
    assert (out / "images" / "cam1" / "0001.jpg").is_file() and (out / "images" / "cam2" / "0001.jpg").is_file()

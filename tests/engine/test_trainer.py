"""The trainer you can trust: exact resume, fallbacks, signals, non-finite losses, safe saves."""

import json
import os
import pickle
import signal
from pathlib import Path

import pytest
import torch
from conftest import FAST, assert_resume_is_exact, detcli, losses, start, wait_for_step

from detcli.checkpoint import load_checkpoint, rotate_save, save_checkpoint
from detcli.errors import CheckpointError


def test_resume_after_sigkill_is_exact(tmp_path, cache_dir):
    """Killed with SIGKILL after step 13 (mid-epoch, with loader workers) and resumed, the run logs the
    same losses up to step 20 (8 steps per epoch) as an uninterrupted one."""
    assert_resume_is_exact(tmp_path, [*FAST, "data.num_workers=2", "trainer.max_steps=20"], 13, 20)
    ckpt = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 20 and ckpt["ema"] is not None and ckpt["rng"]["torch"].dtype == torch.uint8


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path, cache_dir):
    run = tmp_path / "run"
    detcli("train", *FAST, "data.num_workers=0", "trainer.max_steps=4", f"hydra.run.dir={run}")
    last = run / "checkpoints" / "last.pt"
    assert torch.load(run / "checkpoints" / "last.prev.pt", weights_only=True)["step"] == 3
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    proc = detcli("train", *FAST, "data.num_workers=0", "trainer.max_steps=6", f"hydra.run.dir={run}", "resume=auto")
    out = proc.stdout + proc.stderr
    assert "last.pt" in out and "Falling back" in out and "resuming" in out
    assert "at step 3" in out  # not from step 0
    assert torch.load(last, weights_only=True)["step"] == 6


def test_sigterm_finishes_the_step_saves_and_exits_143(tmp_path, cache_dir):
    run = tmp_path / "run"
    proc = start(*FAST, "data.num_workers=0", "trainer.max_steps=100000", "trainer.checkpoint_interval=null",
                 f"hydra.run.dir={run}")
    wait_for_step(run, 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] >= 3 and max(losses(run)) <= ckpt["step"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no partial file


def test_nonfinite_loss_stops_naming_step_and_term(tmp_path, cache_dir):
    proc = detcli("train", *FAST, "data.num_workers=0", "trainer.max_steps=3", "loss.box_weight=nan",
                  f"hydra.run.dir={tmp_path}/run", check=False)
    assert proc.returncode == 1
    assert "non-finite loss at step 1" in proc.stderr and "loss_box" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_nonfinite_loss_skip_leaves_the_weights_alone(tmp_path, cache_dir):
    run = tmp_path / "run"
    detcli("train", *FAST, "data.num_workers=0", "trainer.max_steps=3", "loss.box_weight=nan",
           "trainer.on_nonfinite=skip", "trainer.ema.enabled=false", f"hydra.run.dir={run}")
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["skipped_steps"] == 3 and all(torch.isfinite(v).all() for v in ckpt["model"].values()
                                               if v.is_floating_point())


def test_resume_refuses_another_model(tmp_path, cache_dir):
    run = tmp_path / "run"
    detcli("train", *FAST, "data.num_workers=0", "trainer.max_steps=2", f"hydra.run.dir={run}")
    proc = detcli("train", *FAST, "data.num_workers=0", "trainer.max_steps=4", "neck.out_channels=32",
                  f"hydra.run.dir={run}", "resume=auto", check=False)
    assert proc.returncode != 0 and "neck.out_channels: 64 -> 32" in proc.stderr


def test_grad_checkpointing_gives_the_same_losses_and_gradients(cache_dir):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from detcli.build import build_model
    from detcli.config import config_dir
    from detcli.data.collate import collate

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", ["experiment=toy", "data.num_train=32", "data.num_val=8"])
    data = instantiate(cfg.data)
    ds = data.dataset("train")
    batch = collate([ds[i] for i in range(2)])
    torch.manual_seed(0)
    model = build_model(cfg, data.num_classes).train()
    results = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        out = model(batch["images"], {"boxes": batch["boxes"], "labels": batch["labels"]})
        sum(out.values()).backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (plain, g0), (ckpt, g1) = results
    for k in plain:
        torch.testing.assert_close(plain[k], ckpt[k])
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=1e-4, atol=1e-6)


def test_save_failure_names_the_file_and_keeps_the_old_one(tmp_path):
    good = tmp_path / "last.pt"
    save_checkpoint({"model": {}, "config": {}, "step": 1}, good)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="could not write checkpoint"):
        save_checkpoint({"model": {}, "config": {}}, blocker / "last.pt")
    rotate_save({"model": {}, "config": {}, "step": 2}, good)
    assert load_checkpoint(good)["step"] == 2 and load_checkpoint(tmp_path / "last.prev.pt")["step"] == 1


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/detcli_pwned",))


def test_a_crafted_pickle_cannot_run_code(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": Exploit(), "config": {}}))
    Path("/tmp/detcli_pwned").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    assert not Path("/tmp/detcli_pwned").exists()


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    from detcli.engine.compile import compiled

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("backend exploded")

    monkeypatch.setattr(torch, "compile", lambda module, **kw: Broken())
    wrapped = compiled(torch.nn.Linear(2, 1))
    x = torch.ones(1, 2)
    with caplog.at_level("WARNING"):
        out = wrapped(x)
    torch.testing.assert_close(out, wrapped.module(x))
    assert "torch.compile failed" in caplog.text and "backend exploded" in caplog.text


def test_csv_logger_and_accumulation(tmp_path, cache_dir):
    run = tmp_path / "run"
    detcli("train", *FAST, "data.num_workers=0", "trainer.max_steps=2", "trainer.accumulate=2", "logger=csv",
           "trainer.eval_interval=2", f"hydra.run.dir={run}")
    header = (run / "train_log.csv").read_text().splitlines()[0]
    assert header.startswith("step,epoch,loss,loss_cls")
    assert (run / "eval_log.csv").read_text().splitlines()[0].startswith("step,epoch,map")
    assert json.loads((run / "train_log.jsonl").read_text().splitlines()[-1])["epoch"] == 0.5  # 2 steps x 2 batches of an 8-batch epoch


def test_resume_applies_a_new_learning_rate_and_keeps_best_runs_apart(tmp_path, cache_dir):
    run = tmp_path / "run"
    detcli("train", *FAST, "data.num_workers=0", "trainer.max_steps=4", "trainer.eval_interval=2",
           f"hydra.run.dir={run}")
    detcli("train", *FAST, "data.num_workers=0", "trainer.max_steps=6", "trainer.optimizer.lr=1e-6",
           f"hydra.run.dir={run}", "resume=auto")
    logs = {json.loads(x)["step"]: json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()}
    assert logs[4]["lr"] > 2e-6 and logs[6]["lr"] <= 1e-6  # the lr given on resume holds
    # resuming from best.pt is a new run in its own folder: the original last.pt stays as it was
    detcli("train", *FAST, "data.num_workers=0", "trainer.max_steps=6", f"hydra.run.dir={tmp_path}/from_best",
           f"resume={run}/checkpoints/best.pt")
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 6
    assert (tmp_path / "from_best" / "checkpoints" / "last.pt").is_file()


def test_inference_never_fetches_backbone_weights(trained_run, tmp_path):
    from detcli.build import load_model

    ckpt = torch.load(trained_run / "checkpoints" / "best.pt", weights_only=True)
    ckpt["config"]["backbone"]["pretrained"] = True
    ckpt["config"]["backbone"]["weights"] = str(tmp_path / "moved_away.pth")
    torch.save(ckpt, tmp_path / "ckpt.pt")
    _, cfg, meta, _ = load_model(str(tmp_path / "ckpt.pt"), "cpu")
    assert meta["class_names"] == ["circle", "square", "triangle"] and not cfg.backbone.pretrained


def test_tensorboard_logger_and_early_stopping(tmp_path, cache_dir):
    run = tmp_path / "run"
    # lr 0: val mAP never improves after the first evaluation, so patience=2 stops at the third
    detcli("train", *FAST, "data.num_workers=0", "trainer.max_steps=50", "trainer.eval_interval=2",
           "trainer.optimizer.lr=0", "trainer.patience=2", "logger=tensorboard", f"hydra.run.dir={run}")
    evals = (run / "eval_log.jsonl").read_text().splitlines()
    assert len(evals) == 3 and json.loads(evals[-1])["step"] == 6
    assert list((run / "tb").glob("events.out.tfevents.*"))


def _toy_trainer(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from detcli.build import build_model
    from detcli.config import config_dir
    from detcli.engine.trainer import Trainer

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", ["experiment=toy", "data.num_train=8", "data.num_val=4", "data.canvas=64",
                                "data.image_size=64", "data.batch_size=2", "data.num_workers=0",
                                "trainer.precision=fp32", "trainer.ema.enabled=false", *overrides])
    data = instantiate(cfg.data)
    return Trainer(cfg, build_model(cfg, data.num_classes), data.train_loader(data.dataset("train"), 0), None,
                   tmp_path, torch.device("cpu"), {})


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_gradient_with_a_finite_loss_never_reaches_the_weights(tmp_path, policy):
    """A NaN gradient under a finite loss (as PyTorch's CPU bf16 conv gives now and then, see
    necks/fpn.ExtraConv) is caught by the same once-per-step check as a non-finite loss."""
    from detcli.engine.trainer import NonFiniteLoss

    trainer = _toy_trainer(tmp_path, f"trainer.on_nonfinite={policy}")
    weight = trainer.model.head.cls_logits.weight
    weight.register_hook(lambda g: g * float("nan"))
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}  # (BatchNorm statistics move)
    if policy == "stop":
        with pytest.raises(NonFiniteLoss, match="grad_norm=nan"):
            trainer.run_step(trainer.batches())
    else:
        assert trainer.run_step(trainer.batches()) is None and trainer.skipped_steps == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.model.named_parameters())

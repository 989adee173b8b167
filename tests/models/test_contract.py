"""The Detector contract every head relies on, and the optimizer details of the trainer: targets and
image sizes reach the head, the training progress reaches the criterion, a loss builds without an
assigner, BatchNorm is frozen when weights are loaded, no weight decay on what a model exempts, the
linear lr scaling rule, and one gradient all-reduce per step under accumulation (DDP no_sync)."""

import os

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf
from torch import nn

from detcli.build import loss_arguments
from detcli.engine.optim import build_optimizer, lr_scale, param_groups
from detcli.models.backbones.timm import TimmBackbone
from detcli.models.detector import Detector, TrainingProgress


class _Backbone(nn.Module):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return [self.conv(x)]


class _Recorder(nn.Module):
    """A head or criterion that records what it was called with."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return {"loss_x": args[0]["x"].mean()} if "progress" in kwargs else {"x": args[0][0]}


def test_head_gets_targets_and_sizes_and_criterion_gets_progress():
    head, criterion = _Recorder(), _Recorder()
    model = Detector(_Backbone(), nn.Identity(), head, criterion, nn.Identity()).train()
    images = torch.zeros(2, 3, 16, 24)
    targets = {"boxes": torch.zeros(2, 1, 4), "labels": torch.zeros(2, 1, dtype=torch.long),
               "image_sizes": torch.tensor([[16, 20], [12, 24]])}
    model.progress = TrainingProgress(step=30, total_steps=120, epoch=2, epochs=8)
    losses = model(images, targets)
    assert set(losses) == {"loss_x"}
    _, head_kwargs = head.calls[0]
    assert head_kwargs["targets"]["boxes"] is targets["boxes"]
    assert head_kwargs["image_sizes"].tolist() == [[16, 20], [12, 24]]
    (_, crit_targets), crit_kwargs = criterion.calls[0]
    assert crit_targets["image_sizes"].tolist() == [[16, 20], [12, 24]]
    assert crit_kwargs["progress"].fraction == 0.25 and crit_kwargs["progress"].epoch == 2


def test_image_sizes_default_to_the_input_in_training():
    head, criterion = _Recorder(), _Recorder()
    model = Detector(_Backbone(), nn.Identity(), head, criterion, nn.Identity()).train()
    model(torch.zeros(2, 3, 16, 24), {"boxes": torch.zeros(2, 0, 4), "labels": torch.zeros(2, 0, dtype=torch.long)})
    assert head.calls[0][1]["image_sizes"].tolist() == [[16, 24], [16, 24]]


def test_a_loss_builds_without_an_assigner():
    assert loss_arguments(OmegaConf.create({"_target_": "x"}), 3, [8, 16]) == {"num_classes": 3}
    fcos = OmegaConf.create({"_target_": "x", "assigner": {"_target_": "detcli.assigners.fcos.FCOSAssigner"}})
    assert loss_arguments(fcos, 3, [8, 16]) == {"num_classes": 3, "assigner": {"strides": [8, 16]}}
    # SimOTA reads each point's stride from the head: nothing to inject
    simota = OmegaConf.create({"_target_": "x", "assigner": {"_target_": "detcli.assigners.simota.SimOTAAssigner"}})
    assert loss_arguments(simota, 3, [8, 16]) == {"num_classes": 3}


def _count_bn(module, cls):
    return sum(isinstance(m, cls) for m in module.modules())


def test_batchnorm_is_frozen_when_weights_are_loaded(tmp_path):
    from timm.layers import FrozenBatchNormAct2d
    from torchvision.ops.misc import FrozenBatchNorm2d

    path = tmp_path / "r10t.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), path)
    scratch = TimmBackbone("resnet10t")
    loaded = TimmBackbone("resnet10t", weights=str(path))
    kept = TimmBackbone("resnet10t", weights=str(path), freeze_bn=False)
    assert _count_bn(scratch, nn.BatchNorm2d) > 0 and _count_bn(scratch, FrozenBatchNorm2d) == 0
    assert _count_bn(loaded, nn.BatchNorm2d) == 0 and _count_bn(loaded, (FrozenBatchNorm2d, FrozenBatchNormAct2d)) > 0
    assert _count_bn(kept, nn.BatchNorm2d) > 0
    before = [b.clone() for b in loaded.buffers()]
    loaded.train()(torch.rand(2, 3, 64, 64))  # a training forward leaves the statistics alone
    assert all(torch.equal(a, b) for a, b in zip(before, loaded.buffers()))


def test_no_weight_decay_on_what_the_model_exempts():
    backbone = TimmBackbone("swin_tiny_patch4_window7_224", strides=[8, 16, 32])
    groups = param_groups(backbone, 0.05)
    exempt = {id(p) for n, p in backbone.named_parameters() if "relative_position_bias_table" in n}
    assert exempt and exempt <= {id(p) for p in groups[1]["params"]}
    assert groups[1]["weight_decay"] == 0.0
    assert not exempt & {id(p) for p in groups[0]["params"]}


def test_linear_lr_scaling():
    t = OmegaConf.create({"scale_lr": True, "base_batch_size": 16})
    assert lr_scale(t, 64) == 4.0 and lr_scale(t, 8) == 0.5
    assert lr_scale(OmegaConf.create({"scale_lr": False, "base_batch_size": 16}), 64) == 1.0
    opt_cfg = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01, "weight_decay": 1e-4})
    opt = build_optimizer(opt_cfg, nn.Linear(2, 2), scale=0.5)
    assert all(g["lr"] == pytest.approx(0.005) for g in opt.param_groups)


def _allreduce_count(rank: int, world: int, port: int, accumulate: int, out) -> None:
    """One rank: a Trainer on the toy data; the number of gradient all-reduces of two optimizer steps."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from hydra import compose, initialize_config_dir

    from detcli.build import build_model
    from detcli.config import config_dir
    from detcli.engine.trainer import Trainer

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", ["experiment=toy", "data.num_train=16", "data.num_val=4", "data.canvas=64",
                                "data.image_size=64", "data.batch_size=2", "data.num_workers=0",
                                f"trainer.accumulate={accumulate}", "trainer.max_steps=2", "trainer.ema.enabled=false"])
    data = __import__("hydra.utils", fromlist=["instantiate"]).instantiate(cfg.data)
    train_set = data.dataset("train")
    trainer = Trainer(cfg, build_model(cfg, data.num_classes), data.train_loader(train_set, 0, rank, world),
                      None, out, torch.device("cpu"), {})
    calls = []

    def hook(state, bucket):
        calls.append(1)
        fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
        return fut.then(lambda f: f.value()[0] / world)

    trainer.net.register_comm_hook(None, hook)
    batches = trainer.batches()
    for _ in range(2):
        trainer.run_step(batches)
    if rank == 0:
        (out / f"calls_{accumulate}.txt").write_text(str(len(calls)))
    dist.destroy_process_group()


@pytest.mark.slow  # two gloo processes, as the other DDP cases (make test-all)
def test_accumulation_all_reduces_once_per_step(tmp_path, cache_dir):
    """Two gloo processes: with trainer.accumulate=3 the gradients are all-reduced as often as with 1."""
    for i, accumulate in enumerate((1, 3)):
        mp.spawn(_allreduce_count, args=(2, 29500 + os.getpid() % 1000 + i, accumulate, tmp_path), nprocs=2)
    assert int((tmp_path / "calls_3.txt").read_text()) == int((tmp_path / "calls_1.txt").read_text()) > 0


@pytest.mark.parametrize("head", ["fcos", "yolox", "faster_rcnn"])
def test_reachable_uses_the_priors_the_head_predicts_on(head):
    """Detector.reachable's feature sizes (ceil(H / stride)) are the real ones for an input padded to 32, and
    the head's priors are the constants its forward hands the criterion."""
    from hydra import compose, initialize_config_dir

    from detcli.build import build_model
    from detcli.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"head={head}", "experiment=toy"])
    model = build_model(cfg, num_classes=3).eval()
    images = torch.zeros(1, 3, 96, 160)
    with torch.no_grad():
        feats = model.features(images)
        preds = model.head(feats)
    sizes = [tuple(f.shape[-2:]) for f in feats]
    assert sizes == [(-(-96 // s), -(-160 // s)) for s in model.head.strides]
    for key, value in model.head.priors(sizes, images.device).items():
        assert key not in preds or (torch.equal(preds[key], value) if torch.is_tensor(value) else preds[key] == value)
    boxes = torch.tensor([[[16.0, 16, 48, 48], [16, 16, 48, 48]]])  # a 32 px anchor itself, points inside it
    reached = model.reachable(boxes, torch.tensor([[0, -1]]), (96, 160))
    assert reached.tolist() == [[True, False]]  # padding (label -1) never counts


@pytest.mark.parametrize("head", ["fcos", "yolox", "faster_rcnn"])
def test_every_head_implements_the_contract_in_code(head):
    """models/detector.py's Head / Criterion / Postprocess protocols hold for every shipped head."""
    from hydra import compose, initialize_config_dir

    from detcli.build import build_model
    from detcli.config import config_dir
    from detcli.models.detector import Criterion, Head, Postprocess

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", ["experiment=toy", f"head={head}", "backbone.name=test_convnext"])
    model = build_model(cfg, num_classes=3)
    assert isinstance(model.head, Head) and isinstance(model.criterion, Criterion)
    assert isinstance(model.postprocess, Postprocess)
    assert not isinstance(nn.Linear(2, 2), Head)  # the check is not vacuous

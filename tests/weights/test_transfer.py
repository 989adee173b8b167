"""Weights into a model of other classes (detcli/weights/transfer.py): the rows of the classes both have move by
name, the background row with them, the other rows keep the model's initialisation, any other mismatch is
refused with its key."""

import pytest
import torch

from detcli.build import build_model
from detcli.config import default_config
from detcli.errors import CheckpointError
from detcli.weights.source import Weights
from detcli.weights.transfer import transfer


def model(head: str, classes: int, *extra: str):
    torch.manual_seed(classes)
    return build_model(default_config("train", ["experiment=toy", f"head={head}", *extra]), num_classes=classes)


@pytest.mark.parametrize("head", ["fcos", "yolox", "faster_rcnn"])
def test_class_rows_move_by_name(head):
    source, target = model(head, 3), model(head, 3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    weights = Weights("a.pt", source.state_dict(), ["car", "person", "dog"])
    summary = transfer(target, weights, ["person", "cat", "car"])
    assert summary["kept_classes"] == ["person", "car"] and summary["reinitialised_classes"] == ["cat"]
    assert summary["missing"] == [] and summary["skipped"] == []
    layout = {f"head.{k}": v for k, v in target.head.class_layout().items()}
    src, got = source.state_dict(), target.state_dict()
    for key, (per, extra) in layout.items():
        def rows(t, c, per=per):
            return t[c * per:(c + 1) * per]

        assert torch.equal(rows(got[key], 0), rows(src[key], 1))  # person
        assert torch.equal(rows(got[key], 2), rows(src[key], 0))  # car
        assert torch.equal(rows(got[key], 1), rows(before[key], 1))  # cat: as initialised
        if extra:  # Faster R-CNN's background row comes along
            assert torch.equal(got[key][-extra:], src[key][-extra:])
    other = next(k for k in src if k not in layout and not k.endswith("num_batches_tracked"))
    assert torch.equal(got[other], src[other])


def test_a_shape_mismatch_outside_the_class_rows_names_its_key():
    source, target = model("fcos", 2), model("fcos", 2, "neck.out_channels=32", "head.norm_groups=8")
    with pytest.raises(CheckpointError, match=r"'neck\.lateral\.0\.weight' has shape"):
        transfer(target, Weights("a.pt", source.state_dict(), ["a", "b"]), ["a", "b"])


def test_a_bare_state_dict_of_the_same_class_count_keeps_its_rows_by_position():
    source, target = model("fcos", 2), model("fcos", 2)
    summary = transfer(target, Weights("a.pt", source.state_dict(), None), ["a", "b"])
    assert summary["kept_classes"] == ["a", "b"]
    assert torch.equal(target.state_dict()["head.cls_logits.weight"], source.state_dict()["head.cls_logits.weight"])


def test_read_weights_takes_a_safetensors_file_and_a_detcli_checkpoint(tmp_path, toy_run):
    from safetensors.torch import save_file

    from detcli.weights.source import read_weights

    source = model("fcos", 2)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    weights = read_weights(str(tmp_path / "w.safetensors"))
    assert weights.class_names is None and weights.config is None
    assert torch.equal(weights.state["head.cls_logits.weight"], source.state_dict()["head.cls_logits.weight"])
    ckpt = read_weights(str(toy_run("fcos") / "checkpoints" / "last.pt"))
    assert ckpt.config["head"]["_target_"].endswith("FCOSHead") and len(ckpt.class_names) == len(ckpt.cat_ids) > 0


def test_train_from_another_runs_checkpoint(tmp_path, toy_run):
    from conftest import TINY, detcli

    run = tmp_path / "run"
    detcli("train", *TINY, f"weights={toy_run('fcos') / 'checkpoints' / 'last.pt'}", "trainer.max_steps=1",
           f"hydra.run.dir={run}")
    import json

    summary = json.loads((run / "weights.json").read_text())
    assert summary["missing"] == [] and summary["reinitialised_classes"] == [] and len(summary["kept_classes"]) > 0


def test_a_bare_state_dict_of_another_class_count_reinitialises_the_class_rows():
    source, target = model("fcos", 5), model("fcos", 2)
    before = target.state_dict()["head.cls_logits.weight"].clone()
    summary = transfer(target, Weights("a.pt", source.state_dict(), None), ["a", "b"])
    assert summary["reinitialised_classes"] == ["a", "b"] and summary["kept_classes"] == []
    assert torch.equal(target.state_dict()["head.cls_logits.weight"], before)
    assert torch.equal(target.state_dict()["head.bbox_pred.weight"], source.state_dict()["head.bbox_pred.weight"])


def test_a_missing_checkpoint_is_named_as_a_checkpoint(tmp_path):
    from detcli.build import load_model

    with pytest.raises(CheckpointError, match="checkpoint '.*nope.pt' does not exist"):
        load_model(str(tmp_path / "nope.pt"), "cpu")

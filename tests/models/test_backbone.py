"""timm backbones: levels found by stride, local weights, offline errors, freezing."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from detcli.errors import ConfigError
from detcli.models.backbones.timm import TimmBackbone


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny", "efficientnet_b0", "swin_tiny_patch4_window7_224"])
def test_levels_are_found_by_stride(name):
    kwargs = {"strict_img_size": False} if name.startswith("swin") else {}
    b = TimmBackbone(name, model_kwargs=kwargs)
    assert b.strides == [8, 16, 32]
    feats = b(torch.zeros(1, 3, 128, 160))
    for f, s, c in zip(feats, b.strides, b.out_channels):
        assert f.shape == (1, c, 128 // s, 160 // s)  # NCHW, channels-last models included


def test_missing_stride_names_the_key():
    with pytest.raises(ConfigError, match="backbone.strides"):
        TimmBackbone("resnet18", strides=[8, 64])


def test_unknown_model_names_the_key():
    with pytest.raises(ConfigError, match="backbone.name"):
        TimmBackbone("resnet_does_not_exist")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_is_loaded(tmp_path, suffix):
    reference = timm.create_model("resnet18")
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    path = tmp_path / f"r18{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    b = TimmBackbone("resnet18", weights=str(path))
    torch.testing.assert_close(b.body.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(b.body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_missing_weights_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="backbone.weights"):
        TimmBackbone("resnet18", weights=str(tmp_path / "nope.pth"))


def test_offline_pretrained_failure_names_both_ways_out(monkeypatch):
    create = timm.create_model

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("could not reach the hub")
        return create(*args, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError) as e:
        TimmBackbone("resnet18", pretrained=True)
    assert "backbone.pretrained=false" in str(e.value) and "backbone.weights=PATH" in str(e.value)


def test_freeze_at_freezes_stem_and_first_stage():
    b = TimmBackbone("resnet18", freeze_at=2)
    assert not b.body.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in b.body.layer1.parameters())
    assert all(p.requires_grad for p in b.body.layer2.parameters())
    assert type(b.body.bn1).__name__ == "FrozenBatchNorm2d"


def test_grad_checkpointing_survives_per_module_checkpoints_of_inplace_stems():
    """timm < 1.0.31 checkpoints each top-level module alone, the stem's ReLU(inplace=True) too, which
    failed in backward on a GPU; with checkpointing on, detcli runs those modules out of place."""
    import torch
    from torch.utils.checkpoint import checkpoint

    b = TimmBackbone("resnet18", strides=[8])
    assert b.body.act1.inplace
    b.set_grad_checkpointing(True)
    assert not b.body.act1.inplace
    x = torch.randn(2, 3, 64, 64)
    modules = list(b.body.children())
    for i, module in enumerate(modules):  # the old wrapper: every module but the first and last checkpointed
        x = module(x) if i in (0, len(modules) - 1) else checkpoint(module, x, use_reentrant=False)
    x.sum().backward()
    assert b.body.conv1.weight.grad is not None
    b.set_grad_checkpointing(False)
    assert b.body.act1.inplace

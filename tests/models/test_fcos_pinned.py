"""FCOS keeps its numbers through refactors of the Detector contract: losses and detections of a fixed
model on fixed inputs, pinned from the code before the contract was generalised (commit 170e363)."""

import torch
from hydra import compose, initialize_config_dir

from detcli.build import build_model
from detcli.config import config_dir

LOSSES = {"loss_cls": 1.1342476606369019, "loss_box": 0.9990352988243103, "loss_ctr": 0.702362596988678}
TOP_BOXES = [[[20.0, 34.422943115234375, 20.0, 36.74816131591797],
              [20.0, 82.61673736572266, 21.15384292602539, 84.91694641113281],
              [28.0, 82.1788330078125, 29.76740264892578, 85.5085678100586]],
             [[11.829656600952148, 80.0, 12.341680526733398, 80.0],
              [27.679235458374023, 50.153865814208984, 29.295530319213867, 52.034568786621094],
              [11.829656600952148, 80.0, 12.341680526733398, 80.0]]]
TOP_SCORES = [[0.0853448361158371, 0.08393332362174988, 0.08366461843252182],
              [0.08430341631174088, 0.0834815502166748, 0.0833585187792778]]
TOP_LABELS = [[1, 1, 1], [1, 1, 2]]
SCORE_SUM, BOX_SUM = 15.762476921081543, 45123.84765625


def _model_and_inputs():
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", ["experiment=toy"])
    model = build_model(cfg, 3)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 96, 128), generator=g).float()
    targets = {"boxes": torch.tensor([[[10., 12., 60., 70.], [50., 20., 120., 90.]], [[5., 5., 40., 30.], [0, 0, 0, 0]]]),
               "labels": torch.tensor([[0, 2], [1, -1]]),
               "image_sizes": torch.tensor([[96, 128], [80, 100]])}
    return model, images, targets


def test_fcos_losses_pinned():
    model, images, targets = _model_and_inputs()
    model.train()
    losses = model(images, targets)
    assert list(losses) == list(LOSSES)
    for k, v in LOSSES.items():
        assert losses[k].item() == v or abs(losses[k].item() - v) <= 1e-6 * abs(v), (k, losses[k].item(), v)


def test_fcos_detections_pinned():
    model, images, targets = _model_and_inputs()
    model.train()
    model(images, targets)  # as pinned: one training forward (BatchNorm statistics move) before eval
    model.eval()
    with torch.no_grad():
        d = model(images, image_sizes=targets["image_sizes"])
    torch.testing.assert_close(d["boxes"][:, :3], torch.tensor(TOP_BOXES), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(d["scores"][:, :3], torch.tensor(TOP_SCORES), rtol=1e-6, atol=1e-7)
    assert d["labels"][:, :3].tolist() == TOP_LABELS
    assert abs(d["scores"].sum().item() - SCORE_SUM) < 1e-4
    assert abs(d["boxes"].sum().item() - BOX_SUM) < 0.05

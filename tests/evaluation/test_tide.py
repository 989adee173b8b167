"""The TIDE breakdown on fixtures with planted errors: each kind lands in its bucket, in the planted number,
and fixing it recovers the AP lost (a perfect detector's AP of 1)."""

import pytest
import torch

from detcli.evaluation.tide import tide

CLASSES = 3


def perfect(images=12):
    """Three well separated objects per image, each found exactly by a detection of its class."""
    gen = torch.Generator().manual_seed(0)
    gts, dets = [], []
    for i in range(images):
        boxes = torch.tensor([[10.0, 10, 50, 50], [100, 10, 160, 70], [10, 120, 90, 200]])
        labels = torch.tensor([i % 3, (i + 1) % 3, (i + 2) % 3])
        gts.append({"boxes": boxes, "labels": labels})
        dets.append({"boxes": boxes.clone(), "labels": labels.clone(), "scores": torch.rand(3, generator=gen) * 0.5})
    return dets, gts


def add(d, box, label, score):
    d["boxes"] = torch.cat([d["boxes"], torch.tensor([box], dtype=torch.float32)])
    d["labels"] = torch.cat([d["labels"], torch.tensor([label])])
    d["scores"] = torch.cat([d["scores"], torch.tensor([score])])


def plant(kind: str, n: int = 4):
    dets, gts = perfect()
    for i in range(n):
        d, g = dets[i], gts[i]
        if kind == "dupe":  # a second, better scored detection on the same object: one of the two is a dupe
            add(d, [12.0, 12, 50, 50], int(g["labels"][0]), 0.9)
        elif kind == "bkg":
            add(d, [300.0, 300, 340, 340], 0, 0.9)
        elif kind == "cls":  # the object's only detection has another class
            d["labels"][1] = (g["labels"][1] + 1) % CLASSES
            d["scores"][1] = 0.9
        elif kind == "loc":  # the object's only detection is shifted to IoU ~0.3
            d["boxes"][2] = torch.tensor([50.0, 120, 130, 200])
            d["scores"][2] = 0.9
        elif kind == "both":  # shifted and of another class: an extra detection
            add(d, [50.0, 120, 130, 200], int((g["labels"][2] + 1) % CLASSES), 0.9)
        elif kind == "missed":
            keep = torch.tensor([True, True, False])
            d.update({k: v[keep] for k, v in d.items()})
    return dets, gts


@pytest.mark.parametrize("kind", ["dupe", "bkg", "cls", "loc", "both", "missed"])
def test_each_planted_error_lands_in_its_bucket_and_fixing_it_recovers_the_ap(kind):
    result = tide(*plant(kind), CLASSES)
    assert result["counts"][kind] == 4
    assert result["ap"] < 0.99
    assert result["ap"] + result["delta"][kind] == pytest.approx(1.0)
    others = {"dupe", "bkg", "both"} - {kind} if kind in ("dupe", "bkg", "both") else {"dupe", "bkg", "both"}
    assert all(result["delta"][o] == pytest.approx(0.0) for o in others)
    if kind in ("dupe", "bkg", "both"):  # false positives alone: fixing every false positive is the same
        assert result["delta"]["fp"] == pytest.approx(result["delta"][kind])
        assert result["counts"]["missed"] == 0 and result["delta"]["fn"] == pytest.approx(0.0)


def test_a_perfect_detector_has_nothing_to_recover():
    result = tide(*perfect(), CLASSES)
    assert result["ap"] == pytest.approx(1.0) and all(v == pytest.approx(0.0) for v in result["delta"].values())
    assert all(v == 0 for v in result["counts"].values())


def test_errors_together_are_counted_apart_and_per_class():
    dets, gts = perfect()
    add(dets[0], [12.0, 12, 50, 50], int(gts[0]["labels"][0]), 0.9)  # a dupe
    add(dets[1], [300.0, 300, 340, 340], 0, 0.95)  # background
    dets[2]["labels"][1] = (gts[2]["labels"][1] + 1) % CLASSES  # a class error
    dets[3]["boxes"][2] = torch.tensor([50.0, 120, 130, 200])  # a localisation error
    result = tide(dets, gts, CLASSES)
    assert {k: v for k, v in result["counts"].items() if v} == {"dupe": 1, "bkg": 1, "cls": 1, "loc": 1}
    assert len(result["per_class"]) == CLASSES and all(0 < c["ap"] <= 1 for c in result["per_class"])
    assert all(result["delta"][k] > 0 for k in ("dupe", "bkg", "cls", "loc", "fp"))


def test_nothing_found_recovers_nothing_by_dropping_the_missed():
    """Every detection off target: fixing the false negatives takes every object out of the count, which
    finds nothing (AP stays 0), rather than leaving no class to average."""
    dets, gts = perfect()
    for d in dets:
        d["boxes"] = d["boxes"] + 300.0
    result = tide(dets, gts, CLASSES)
    assert result["ap"] == 0 and result["delta"]["fn"] == 0 and result["counts"]["bkg"] == 36

"""Learning-rate schedules: hand-computed factors, and a run lengthened on resume."""

import math

import pytest
from omegaconf import OmegaConf

from detcli.engine.schedule import lr_factor

CFG = {"warmup_steps": 10, "warmup_factor": 0.1, "milestones": [2, 3], "gamma": 0.1, "min_lr_ratio": 0.0}


def test_warmup_is_linear():
    cfg = OmegaConf.create({**CFG, "name": "constant"})
    assert lr_factor(0, 100, 10, cfg) == pytest.approx(0.1)
    assert lr_factor(5, 100, 10, cfg) == pytest.approx(0.55)
    assert lr_factor(10, 100, 10, cfg) == 1.0


def test_multistep_at_epoch_milestones():
    cfg = OmegaConf.create({**CFG, "name": "multistep"})
    assert lr_factor(19, 100, 10, cfg) == 1.0
    assert lr_factor(20, 100, 10, cfg) == pytest.approx(0.1)
    assert lr_factor(30, 100, 10, cfg) == pytest.approx(0.01)


def test_cosine_follows_a_new_length():
    cfg = OmegaConf.create({**CFG, "name": "cosine"})
    assert lr_factor(55, 100, 10, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    # the same step of a run lengthened to 190 steps is earlier in its schedule
    assert lr_factor(55, 190, 10, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 180)))


def test_onecycle_rises_then_falls():
    cfg = OmegaConf.create({**CFG, "name": "onecycle", "pct_start": 0.3})
    assert lr_factor(0, 100, 10, cfg) == pytest.approx(0.1)
    assert lr_factor(15, 100, 10, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half way up the cosine rise
    assert lr_factor(30, 100, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, cfg) == pytest.approx(0.0)

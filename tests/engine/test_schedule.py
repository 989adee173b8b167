"""Learning-rate schedules: hand-computed factors (warmup x decay), milestones as fractions of the run,
the automatic warmup that fits the run, and a run lengthened on resume."""

import math

import pytest
from omegaconf import OmegaConf

from detcli.engine.schedule import lr_factor, milestone_steps, warmup_steps

CFG = {"warmup_steps": 10, "warmup_factor": 0.1, "milestones": [2, 3], "gamma": 0.1, "min_lr_ratio": 0.0}


def cfg(**kw):
    return OmegaConf.create({**CFG, **kw})


def test_warmup_is_linear():
    c = cfg(name="constant")
    assert lr_factor(0, 100, 10, c) == pytest.approx(0.1)
    assert lr_factor(5, 100, 10, c) == pytest.approx(0.55)
    assert lr_factor(10, 100, 10, c) == 1.0


def test_multistep_at_epoch_milestones():
    c = cfg(name="multistep")
    assert lr_factor(19, 100, 10, c) == 1.0
    assert lr_factor(20, 100, 10, c) == pytest.approx(0.1)
    assert lr_factor(30, 100, 10, c) == pytest.approx(0.01)


def test_warmup_multiplies_the_decayed_factor():
    """A milestone inside the warmup: the warmup ramps the decayed value (detectron2), never a 100x drop
    in one step when the warmup ends."""
    c = cfg(name="multistep", warmup_steps=40, milestones=[0.1, 0.3])  # milestones at steps 10 and 30 of 100
    assert lr_factor(5, 100, 10, c) == pytest.approx(1.0 * (0.1 * (1 - 5 / 40) + 5 / 40))
    assert lr_factor(10, 100, 10, c) == pytest.approx(0.1 * (0.1 * 0.75 + 0.25))
    assert lr_factor(35, 100, 10, c) == pytest.approx(0.01 * (0.1 * (5 / 40) + 35 / 40))
    assert lr_factor(39, 100, 10, c) == pytest.approx(0.01 * (0.1 / 40 + 39 / 40))
    assert lr_factor(40, 100, 10, c) == pytest.approx(0.01)  # the warmup ends on the decayed value


def test_milestones_as_fractions_of_the_run():
    assert milestone_steps([0.667, 0.917], 1200, 375) == [800, 1100]
    assert milestone_steps([8, 11], 1200, 100) == [800, 1100]  # numbers >= 1 are still epochs
    c = cfg(name="multistep", warmup_steps=0, milestones=[0.5, 0.75])
    assert [lr_factor(s, 1200, 375, c) for s in (599, 600, 899, 900)] == pytest.approx([1, 0.1, 0.1, 0.01])
    with pytest.raises(ValueError, match="milestones"):
        milestone_steps([0], 100, 10)


def test_auto_warmup_fits_the_run():
    c = cfg(name="cosine", warmup_steps="auto")
    assert warmup_steps(c, 100) == 33  # a third of a 100-step run
    assert warmup_steps(c, 1200) == 400
    assert warmup_steps(c, 100_000) == 1000  # at most 1000 steps
    assert warmup_steps(cfg(warmup_steps=500), 1200) == 500
    assert warmup_steps(cfg(warmup_steps=500), 600) == 300  # an explicit warmup is capped at half the run


def test_cosine_follows_a_new_length():
    c = cfg(name="cosine", warmup_steps=10)
    assert lr_factor(55, 100, 10, c) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.55)))
    # the same step of a run lengthened to 190 steps is earlier in its schedule
    assert lr_factor(55, 190, 10, c) == pytest.approx(0.5 * (1 + math.cos(math.pi * 55 / 190)))
    # inside the warmup, the cosine value is ramped
    assert lr_factor(5, 100, 10, c) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.05)) * 0.55)


def test_onecycle_rises_then_falls():
    c = cfg(name="onecycle", pct_start=0.3)
    assert lr_factor(0, 100, 10, c) == pytest.approx(0.1)
    assert lr_factor(15, 100, 10, c) == pytest.approx(0.1 + 0.9 * 0.5)  # half way up the cosine rise
    assert lr_factor(30, 100, 10, c) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, c) == pytest.approx(0.0)


@pytest.mark.parametrize("length", ["trainer.max_steps=100", "trainer.epochs=100"])
def test_defaults_fit_a_run_of_any_length(length):
    """Only the length given: the default schedule warms up briefly and decays over this very run."""
    from hydra import compose, initialize_config_dir

    from detcli.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        t = compose("train", [length]).trainer
    steps_per_epoch = 37
    total = int(t.max_steps) if t.max_steps else int(t.epochs) * steps_per_epoch
    factors = [lr_factor(s, total, steps_per_epoch, t.scheduler) for s in range(total + 1)]
    peak = max(range(total), key=lambda s: factors[s])
    assert factors[0] < 0.01
    assert peak <= 0.34 * total  # the warmup is at most a third of the run
    assert factors[total // 2] == pytest.approx(0.5 * (1 + t.scheduler.min_lr_ratio), rel=0.05)
    assert factors[-1] <= 1.01 * t.scheduler.min_lr_ratio  # fully decayed at the end of this run


def test_warmup_in_epochs():
    # YOLOX's 5 warmup epochs at 100 steps per epoch: 500 steps, whatever warmup_steps says; capped like steps
    assert warmup_steps(cfg(warmup_epochs=5, warmup_steps=7), 30_000, steps_per_epoch=100) == 500
    assert warmup_steps(cfg(warmup_epochs=5), 600, steps_per_epoch=100) == 300
    assert lr_factor(250, 30_000, 100, cfg(warmup_epochs=5, name="constant")) == pytest.approx(0.1 * 0.5 + 0.5)

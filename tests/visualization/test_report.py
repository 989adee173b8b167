"""Runs you can compare: the config diff against the defaults (unit), the end-of-training curves.png and
self-contained report.html of the shared toy run, the diff table at the start of its log, and `detcli
compare` on a two-job sweep (trainer.report=false there: no report)."""

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from conftest import TINY, detcli
from omegaconf import OmegaConf

from detcli.config import config_diff, default_config, diff_table, differing_keys, flatten
from detcli.tasks import compare
from detcli.visualization.report import SECTIONS

PNG = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """The section ids, the data-URI images and the table cells of a page."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.cells, self.external = [], [], [], []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "img":
            src = attrs["src"]
            prefix = "data:image/png;base64,"
            (self.images if src.startswith(prefix) else self.external).append(base64.b64decode(src[len(prefix):]))
        if tag in ("script", "link"):
            self.external.append(tag)
        self._in_cell = tag == "td"

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data)

    def handle_endtag(self, tag):
        self._in_cell = False


def test_config_diff_lists_changed_added_and_removed_keys_without_hydra():
    defaults = {"seed": 0, "trainer": {"lr": 0.01, "momentum": 0.9, "ema": {"decay": 0.99}}, "hydra": {"x": 1}}
    run = {"seed": 0, "trainer": {"lr": 0.02, "betas": [0.9, 0.999], "ema": {"decay": 0.99}}}
    assert flatten(defaults) == {"seed": 0, "trainer.lr": 0.01, "trainer.momentum": 0.9, "trainer.ema.decay": 0.99}
    assert config_diff(defaults, run) == [("trainer.betas", "-", [0.9, 0.999]), ("trainer.lr", 0.01, 0.02),
                                          ("trainer.momentum", 0.9, "-")]
    assert differing_keys([defaults, run, run]) == ["trainer.betas", "trainer.lr", "trainer.momentum"]
    text = diff_table(config_diff(defaults, run))
    assert text.splitlines()[0] == "config: 3 keys differ from the defaults (default -> this run)"
    assert "trainer.lr" in text and "0.01 -> 0.02" in text
    assert diff_table([]).startswith("config: the defaults")


def test_default_config_is_train_with_no_overrides():
    from hydra import compose, initialize_config_dir

    from detcli.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        changed = compose("train", overrides=["seed=3", "trainer.patience=2"])
    defaults = default_config("train")
    assert "hydra" not in defaults and defaults.seed == 0 and defaults.trainer.report is True
    assert config_diff(defaults, changed) == [("seed", 0, 3), ("trainer.patience", None, 2)]


def test_training_leaves_curves_and_a_self_contained_report(trained_run):
    assert (trained_run / "curves.png").read_bytes()[:8] == PNG
    page = Page()
    page.feed((trained_run / "report.html").read_text(encoding="utf-8"))
    assert page.sections == list(SECTIONS)
    assert len(page.images) >= 3 and all(png[:8] == PNG for png in page.images)  # curves, PR curves, predictions
    assert page.external == []  # nothing to fetch: no script, stylesheet link or image file
    cells = page.cells
    assert cells[cells.index("trainer.max_steps"):][:3] == ["trainer.max_steps", "null", "6"]
    assert cells[cells.index("trainer.log_interval"):][:3] == ["trainer.log_interval", "20", "2"]
    final = json.loads((trained_run / "eval_log.jsonl").read_text().splitlines()[-1])
    assert cells[cells.index("map_50"):][:2] == ["map_50", f"{final['map_50']:.4f}"]
    assert {"circle", "square", "triangle", "all classes", "count"} <= set(cells)  # per-class and TIDE rows
    log = (trained_run / "train.log").read_text()
    assert "keys differ from the defaults" in log and "null -> 6" in log and "hydra." not in log.split("data:")[0]


@pytest.mark.parametrize("browser", ["chromium", "chromium-browser", "google-chrome", "firefox"])
def test_report_opens_in_a_headless_browser(trained_run, browser):
    exe = shutil.which(browser)
    if exe is None:
        pytest.skip(f"{browser} is not installed")
    flags = ["--headless", "--dump-dom"] if "firefox" not in browser else ["--headless", "--screenshot"]
    proc = subprocess.run([exe, *flags, (trained_run / "report.html").as_uri()], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    if "--dump-dom" in flags:
        assert all(f'id="{s}"' in proc.stdout for s in SECTIONS)


def test_compare_a_two_job_sweep(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    detcli("train", "-m", *TINY, "trainer.max_steps=1", "trainer.report=false", "trainer.optimizer.lr=0.001,0.01",
           f"hydra.sweep.dir={sweep}")
    assert not (sweep / "0" / "report.html").exists() and not (sweep / "0" / "curves.png").exists()
    proc = detcli("compare", str(sweep), cwd=tmp_path)
    lines = [line for line in proc.stdout.splitlines() if "trainer.optimizer.lr=" in line]
    assert "2 runs: 1 config keys differ" in proc.stdout
    assert [line.split("│")[1].strip() for line in lines] == ["0", "1"]
    assert "lr=0.001 " in lines[0] and "lr=0.01 " in lines[1] and all(line.rstrip("│ ").endswith("1") for line in lines)
    best = [float(json.loads(line)["map"]) for job in ("0", "1")
            for line in (sweep / job / "eval_log.jsonl").read_text().splitlines()]
    assert [f"{m:.4f}" in line for m, line in zip(best, lines)] == [True, True]
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG

    assert compare.main([str(sweep / "1"), str(sweep / "0"), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == PNG
    config = OmegaConf.load(sweep / "0" / "config.yaml")
    assert config.trainer.optimizer.lr == 0.001 and config.trainer.report is False


def test_compare_names_a_folder_that_holds_no_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert compare.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert f"'{tmp_path / 'empty'}' has no config.yaml, nor job subfolders with one" in err

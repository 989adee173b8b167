"""The package's import layers (pyproject.toml [tool.importlinter], docs/architecture.md) hold, and the
check is real: a module that imports from a layer above it makes `lint-imports` fail."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath else dict(os.environ)
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_the_layers_hold():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    """A copy of the package where ops/ (the bottom layer) imports the trainer: the contract breaks and the
    report names the import."""
    shutil.copytree(ROOT / "detcli", tmp_path / "detcli")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    boxes = tmp_path / "detcli" / "ops" / "boxes.py"
    boxes.write_text(boxes.read_text() + "\nfrom detcli.engine.trainer import Trainer  # noqa: E402,F401\n")
    proc = lint_imports(tmp_path, pythonpath=tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "BROKEN" in proc.stdout and "detcli.ops.boxes -> detcli.engine.trainer" in proc.stdout

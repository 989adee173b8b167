"""The manual: docs/ builds as a MkDocs site with no warning (strict), and README.md stays a short front page."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["index", "configs", "data", "heads", "training", "evaluation", "predict-export", "sweeps",
         "benchmarks", "precision", "architecture"]


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_site_builds_strict(tmp_path):
    result = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    for page in PAGES:
        assert (tmp_path / "site" / ("" if page == "index" else page) / "index.html").is_file(), page


def test_every_page_is_in_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert {f"{page}.md" for page in PAGES} <= pages
    for name in pages:
        assert re.search(rf"^\s+- [^:]+: {re.escape(name)}$", nav, re.MULTILINE), f"{name} is not in mkdocs.yml's nav"


@pytest.mark.parametrize("link", ["[x](nope.md)", "[x](heads.md#nope)"])
def test_broken_link_fails_the_build(tmp_path, link):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    with open(docs / "index.md", "a") as f:
        f.write(f"\n{link}\n")
    config = (ROOT / "mkdocs.yml").read_text()
    config = re.sub(r"^docs_dir: .*$", f"docs_dir: {docs}", config, flags=re.MULTILINE)
    (tmp_path / "mkdocs.yml").write_text(config)
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "nope" in result.stderr, result.stderr


def test_readme_is_a_short_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 120
    assert "make demo" in readme and "make test" in readme
    for page in PAGES:  # every page of the manual is linked from the front page
        assert f"docs/{page}.md" in readme, page

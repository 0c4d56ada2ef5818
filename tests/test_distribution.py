"""The distribution: wheel and sdist build, and the wheel alone runs the README's and the
getting-started page's commands, as written, outside the repo.

The clean environment is a fresh venv holding only the wheel (installed with ``--no-deps``). Its
dependencies (torch, timm, ...) are not downloaded again: a ``.pth`` line appends this test
environment's site-packages to the clean venv's path. A path named in a ``.pth`` file is added
as it is, without running the ``.pth`` files inside it, so the editable install of this checkout
(a ``.pth`` hook in that folder) stays invisible: ``nbdt`` can only come from the wheel, which
the test checks, and the commands run from a folder outside the repository with no PYTHONPATH.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from helpers.doc_blocks import environment, link_venv, run_pages

ROOT = Path(__file__).resolve().parents[1]
_PYPROJECT = (ROOT / "pyproject.toml").read_text()
NAME = re.search(r'^name = "([^"]+)"', _PYPROJECT, re.M).group(1)
VERSION = re.search(r'^version = "([^"]+)"', _PYPROJECT, re.M).group(1)
SCRIPTS = re.findall(r'^(nbdt-[\w-]+) = "', _PYPROJECT, re.M)
# What a copy of the source needs; the rest (environments, runs, caches, the site) stays behind.
_LEAVE = shutil.ignore_patterns(
    ".git", ".venv", "runs", "site", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_name_is_not_pypis_nbdt():
    """PyPI's `nbdt` is the 2020 reference release: this package must not claim that name."""
    assert NAME == "nbdt-timm"


@pytest.mark.slow
def test_wheel_installs_and_runs_the_readme_and_getting_started_outside_the_repo(tmp_path):
    source, dist = tmp_path / "source", tmp_path / "dist"
    shutil.copytree(ROOT, source, ignore=_LEAVE)
    # --no-isolation: the build backend comes from this environment, nothing is downloaded
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)])
    wheel = dist / f"nbdt_timm-{VERSION}-py3-none-any.whl"
    sdist = dist / f"nbdt_timm-{VERSION}.tar.gz"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    for needed in (
        "nbdt/cli/train.py",
        "nbdt/hierarchies/imagenet-induced.json",
        "nbdt/templates/hierarchy.html",
        "nbdt/classes/imagenet.tsv",
        "nbdt/resources/lexnames",
    ):
        assert needed in names, f"the wheel lacks {needed}"
    with tarfile.open(sdist) as t:
        members = {m.split("/", 1)[1] for m in t.getnames() if "/" in m}
    assert {"pyproject.toml", "README.md", "nbdt/model.py", "hierarchies/cifar10-wordnet.json"} <= (
        members
    )

    venv = tmp_path / "clean"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    # the wheel first, while the venv sees nothing else: pip must not find this checkout's
    # editable install of the same name and call the wheel "already satisfied"
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheel)]
    )  # fmt: skip
    (purelib / "test-env-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = environment()
    where = _run([str(python), "-c", "import nbdt; print(nbdt.__file__)"], cwd=work, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    for command in SCRIPTS:
        assert (venv / "bin" / command).is_file(), f"{command} is not installed"

    link_venv(work, venv)  # the pages' `.venv/bin/...` commands now run the clean venv
    run_pages([ROOT / "README.md", ROOT / "docs" / "getting-started.md"], work, env, timeout=600)
    assert (work / "runs" / "quick" / "best.pt").is_file()

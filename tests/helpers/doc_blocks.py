"""The code blocks of a Markdown page, run as a reader would: in order, in one folder.

A ```bash block runs in bash with ``set -e``; a ```python block runs as a file with the folder's
``.venv/bin/python``, as the pages say. A block right after a ``<!-- long -->`` line (``make demo``,
``make setup``) is left out; blocks of other languages (output shown as ```text) are not code.
The folder holds a ``.venv`` link to the environment under test, so the commands run as written.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
LONG = "<!-- long -->"


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, its text and the line it starts on."""

    language: str
    code: str
    line: int


def code_blocks(markdown: str) -> list[Block]:
    """The bash and python blocks of ``markdown`` that are not marked long."""
    blocks = []
    for m in _FENCE.finditer(markdown):
        before = markdown[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        if m.group(1) in ("bash", "python") and before != LONG:
            line = markdown.count("\n", 0, m.start()) + 1
            blocks.append(Block(m.group(1), m.group(2), line))
    return blocks


def link_venv(folder: Path, venv: Path) -> None:
    """Make ``folder/.venv`` the environment whose ``bin/`` the pages' commands name."""
    (folder / ".venv").symlink_to(venv, target_is_directory=True)


def run_block(block: Block, folder: Path, env: dict[str, str], name: str, timeout: float) -> None:
    """Run one block in ``folder``; a failure names the page, the line and the output."""
    if block.language == "bash":
        cmd = ["bash", "-c", "set -e\n" + block.code]
    else:
        script = folder / f"_block_{block.line}.py"
        script.write_text(block.code)
        cmd = [str(folder / ".venv" / "bin" / "python"), script.name]
    r = subprocess.run(
        cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if r.returncode != 0:
        raise AssertionError(
            f"{name}:{block.line}: the {block.language} block exited {r.returncode}\n"
            f"{block.code}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
        )


def run_pages(pages: list[Path], folder: Path, env: dict[str, str], timeout: float) -> None:
    """Every block of ``pages``, page after page, in ``folder``. A block an earlier page already
    ran (the same text, as the getting-started page repeats the README's) is not run twice."""
    done: set[str] = set()
    for page in pages:
        for block in code_blocks(page.read_text()):
            if block.code not in done:
                run_block(block, folder, env, page.name, timeout)
                done.add(block.code)


def environment(**extra: str) -> dict[str, str]:
    """os.environ without PYTHONPATH (the tests' own path must not leak in), offline, plus extra."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env

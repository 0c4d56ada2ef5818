"""MkDocs hook: the command-line reference (cli.md), generated from the commands' own parsers.

Every command is a module of ``nbdt.cli`` with ``parser()``, so the page is what ``--help`` prints,
never a copy that can drift from it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil

from mkdocs.structure.files import File, Files


def parsers() -> list[argparse.ArgumentParser]:
    """Every command's parser, in the order of the command names."""
    import nbdt.cli

    found = [
        importlib.import_module(f"nbdt.cli.{m.name}").parser()
        for m in pkgutil.iter_modules(nbdt.cli.__path__)
        if not m.name.startswith("_")
    ]
    return sorted(found, key=lambda p: p.prog)


def _help(p: argparse.ArgumentParser) -> str:
    return "```text\n" + p.format_help().rstrip() + "\n```\n"


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def markdown() -> str:
    """The whole page: one section per command (and per subcommand), its --help as printed."""
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width: fix it
    out = [
        "# Command-line reference\n",
        "Generated from each command's parser when the site is built: this is what `--help`"
        " prints. Every command exits with status 0 on success and 2 on bad input, with one"
        " line on stderr naming the file or argument.\n",
    ]
    for p in parsers():
        out += [f"## {p.prog}\n", _help(p)]
        for sub, sp in _subparsers(p).items():
            out += [f"### {p.prog} {sub}\n", _help(sp)]
    return "\n".join(out)


def on_files(files: Files, config) -> Files:
    """Add the generated cli.md to the site's files."""
    files.append(File.generated(config, "cli.md", content=markdown()))
    return files

"""Command-line entry points: thin argparse layers over the Python API.

Bad input ends with one line on stderr and exit status 2; nothing here holds logic the API lacks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """Raised by CLI code for a user error: printed as one line, exit status 2."""


def _run(prog: str, main: Callable[[argparse.Namespace], int | None], parser, argv) -> int:
    """Parse arguments and run ``main``; user errors become one stderr line and exit 2."""
    args = parser.parse_args(argv)
    try:
        return int(main(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (BadInput, ValueError, OSError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


# ---------------------------------------------------------------- nbdt-hierarchy (issue 2, 5)
def hierarchy_main(argv: Sequence[str] | None = None) -> int:
    """nbdt-hierarchy: build, show and export class hierarchies."""
    raise SystemExit("nbdt-hierarchy: not implemented yet")


# ---------------------------------------------------------------- nbdt-train (issue 4)
def train_main(argv: Sequence[str] | None = None) -> int:
    """nbdt-train: tree-supervised fine-tuning."""
    raise SystemExit("nbdt-train: not implemented yet")


# ---------------------------------------------------------------- nbdt-explain (issue 3, 5)
def explain_main(argv: Sequence[str] | None = None) -> int:
    """nbdt-explain: explain predictions on images."""
    raise SystemExit("nbdt-explain: not implemented yet")

"""What every command shares: one error type and exit status, argument types, the data flags,
and loading a checkpoint with mode and node-score overrides.

Bad input ends with one line on stderr and exit status 2; nothing here holds logic the API lacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from nbdt._messages import one_line

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """Raised by CLI code for a user error: printed as one line, exit status 2."""


def run(prog: str, main: Callable[[argparse.Namespace], int | None], parser, argv) -> int:
    """Parse arguments and run ``main``; user errors become one stderr line and exit 2."""
    args = parser.parse_args(argv)
    try:
        return int(main(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `nbdt-... | head`: the reader left, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (BadInput, ValueError, OSError) as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every process fails alike
            print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def comma_list(text: str) -> list[str]:
    """A comma-separated list of names, spaces around each trimmed ("": none)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum`` (0 or 1)."""
    kind = "non-negative" if minimum == 0 else "positive"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}")
        return value

    return parse


non_negative_int = int_at_least(0)
positive_int = int_at_least(1)


def load_model(path: str, mode: str | None, node_score: str | None):
    """An nbdt model file, with the mode and node score overridden where given."""
    from nbdt.model import NBDT, read_checkpoint

    checkpoint = read_checkpoint(path)
    checkpoint["mode"] = mode or checkpoint.get("mode")
    checkpoint["node_score"] = node_score or checkpoint.get("node_score")
    return NBDT.from_checkpoint(checkpoint, source=path).eval()

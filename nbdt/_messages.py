"""Error messages as one line: what every bad-input report of nbdt prints."""

from __future__ import annotations


def one_line(error: BaseException) -> str:
    """The line of an error's message that says what was wrong (the type's name if none).

    An error raised in a DataLoader worker arrives re-raised as "Caught ValueError in DataLoader
    worker process 0." followed by the worker's traceback: its last line is the original message.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        return lines[-1].split(": ", 1)[-1]
    return lines[0]


# Bidirectional-text controls: they reorder what follows them on the line ("100.0%" -> "%0.001").
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def for_terminal(text: str) -> str:
    """``text`` safe to print: control characters (ESC sequences, BEL, tabs, newlines, C1) and
    bidi controls become visible escapes (``\\x1b``, ``\\u202e``); everything else is kept.

    Labels, class names and file names come from files anyone can write: print them through
    this so they can neither drive the terminal nor reorder the line.
    """
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif ch in _BIDI:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)

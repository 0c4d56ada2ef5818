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

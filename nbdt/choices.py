"""One check for every named choice (a mode, a node score, a loss, a dataset, ...): the value
must be a key of the table that dispatch reads, or the one ``ValueError`` names the option.

The tables stay where their entries live (``nbdt.model.MODES``, ``nbdt.rules.NODE_SCORES``, ...);
argparse's ``choices=``, validation and dispatch all read them. This module imports nothing from
nbdt, so any module can use it.
"""

from __future__ import annotations

from collections.abc import Collection


def check_choice(option: str, value: object, allowed: Collection[str]) -> None:
    """Raise ``ValueError("OPTION must be one of A, B, got 'x'")`` unless ``value`` is one of
    ``allowed`` (a Mapping's keys or a Sequence of names).

    ``option`` names what the user set, as they set it: ``"--node-score"`` at the command line,
    ``"node_score"`` in the Python API.
    """
    try:
        known = value in allowed
    except TypeError:  # an unhashable value is in no table
        known = False
    if not known:
        raise ValueError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")

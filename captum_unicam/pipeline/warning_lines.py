r"""Which warnings a run reports as its own, and how one is written on one line.

The command line prints each warning of a run as one line (``captum-unicam CMD: warning:
...``) and the reports carry the same lines (their warnings section and
``metrics.json["warnings"]``). Both use the two functions here, so the rule is stated once:
a run reports every warning except the deprecation notices of the libraries it runs on
(torch, Captum, transformers), which concern their code, not the user's run; those are left
to Python's own display (and to the warning filters, which hide them by default).

This module imports nothing heavy (the command line's ``--help`` loads no torch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_reported", "one_line"]

_NOT_REPORTED = (DeprecationWarning, PendingDeprecationWarning)


def is_reported(category: type) -> bool:
    """True for a warning the run reports (everything but the libraries' deprecation
    notices)."""
    return not issubclass(category, _NOT_REPORTED)


def one_line(message: Any) -> str:
    """The warning's text with every run of white space, line breaks included, as one space."""
    return " ".join(str(message).split())

"""Internal: whether a process id is alive (for leftovers of killed runs).

Shared by the checkpoint writer and the report publisher; not part of the public API.
"""

from __future__ import annotations

import os

__all__ = ["pid_alive"]


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists (also when it belongs to another user)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError included: it exists, owned by someone else
        return True
    return True

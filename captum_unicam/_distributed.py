r"""Internal module: joining and leaving a ``torchrun`` process group with a bounded wait.

Not public API. The pipeline calls :func:`join_process_group` before it evaluates and
:func:`leave_process_group` after, and :func:`rank_and_world` to shard the work.

A job script (torchrun, SLURM) hands its processes ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. A process that inherits them without
its peers (one process started by hand inside the job, a peer that died) would wait in
``torch.distributed.init_process_group`` for 30 minutes, deaf to SIGTERM, because the wait
runs in C++. Here the environment is checked first (one :class:`~captum_unicam.errors.
InputError` naming the variable), then the processes meet in a TCP store polled from
Python in short steps, so that

- an absent or unreachable peer ends the join after ``timeout_s`` seconds (default
  :data:`DEFAULT_TIMEOUT_S`, or the environment variable ``CAPTUM_UNICAM_DIST_TIMEOUT``)
  with one ``InputError`` line that names the variables and the time waited, and
- a signal handler that raises (the command line turns SIGTERM and SIGHUP into
  :class:`KeyboardInterrupt`) ends the join within a fraction of a second, and the store
  this process opened is closed.

Rank 0 hosts the store at ``MASTER_PORT`` (as torch's ``env://`` rendezvous does), except
under torchrun with ``TORCHELASTIC_USE_AGENT_STORE=True``, where the agent hosts it and
every rank connects. The process group itself is created on that store once every rank has
checked in; collectives afterwards keep torch's own timeout.

Two calls block in C++ without a bound of their own: a store client's handshake (a server
that accepts and never answers keeps it waiting however small torch's timeout) and the
creation of the group (a peer that died right after checking in). They run in a daemon
thread while the calling thread waits in short steps. Where one outlives the deadline or a
signal, the error is raised at once and the thread is left blocked: it ends with the
process (or, when the other side closes, with torch's own timeout).
"""

from __future__ import annotations

import functools
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from captum_unicam.errors import InputError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "DistributedWarning",
    "join_process_group",
    "leave_process_group",
    "rank_and_world",
]

#: Seconds a process waits for its peers before the join ends with an error.
DEFAULT_TIMEOUT_S = 60.0
#: Environment variable that replaces :data:`DEFAULT_TIMEOUT_S` (seconds, > 0).
TIMEOUT_ENV = "CAPTUM_UNICAM_DIST_TIMEOUT"

_FIX = "unset WORLD_SIZE/RANK to run in one process, or start with torchrun"
_POLL_S = 0.1  # the longest a signal waits to be handled during the join
_KEY = "captum_unicam/join"


class DistributedWarning(UserWarning):
    """``WORLD_SIZE`` asks for several processes but this torch has no
    ``torch.distributed``: every process would evaluate everything on its own."""


@dataclass(frozen=True)
class _Env:
    rank: int
    world: int
    local_rank: int
    addr: str
    port: int

    def describe(self) -> str:
        return (
            f"WORLD_SIZE={self.world} RANK={self.rank} MASTER_ADDR={self.addr} "
            f"MASTER_PORT={self.port}"
        )


def rank_and_world() -> tuple[int, int]:
    r"""The rank of this process and the number of processes of the default process group,
    or ``(0, 1)`` outside one.

    Returns:
        *tuple* of *int*: ``(rank, world_size)``.

    Examples::

        >>> rank_and_world()
        (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def join_process_group(device: torch.device, *, timeout_s: float | None = None) -> bool:
    r"""Joins the process group that ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` describe (gloo on CPU, nccl on CUDA, where the
    CUDA device becomes ``cuda:LOCAL_RANK``), waiting at most ``timeout_s`` seconds for
    the other processes.

    Args:
        device (torch.device): The device the models run on; picks the backend.
        timeout_s (float, optional): Seconds to wait for every process to check in.
                    Default: ``None``, the environment variable ``CAPTUM_UNICAM_DIST_TIMEOUT``
                    where set, else :data:`DEFAULT_TIMEOUT_S` (60).

    Returns:
        *bool*: ``True`` if this call started the process group (pass it to
        :func:`leave_process_group`); ``False`` when ``WORLD_SIZE`` is unset or 1, a
        process group already exists, or torch has no ``torch.distributed`` (with a
        :class:`DistributedWarning`).

    Raises:
        InputError: A variable is missing or malformed (before any socket is opened),
                    ``MASTER_PORT`` is taken, or the peers did not all check in within
                    ``timeout_s``; the message names the variables, the time waited and
                    the fix.
        KeyboardInterrupt: From a signal handler while waiting; the store is closed.

    Examples::

        >>> started = join_process_group(torch.device("cpu"))
        >>> try:
        ...     rank, world = rank_and_world()
        ...     ...
        ... finally:
        ...     leave_process_group(started)
    """
    if not os.environ.get("WORLD_SIZE", "").strip():  # unset or empty: one process
        return False
    world = _int_var("WORLD_SIZE", low=1)
    if world <= 1:
        return False
    if not dist.is_available():
        warnings.warn(
            f"WORLD_SIZE={world} but this torch has no torch.distributed: this process "
            f"evaluates everything alone; {_FIX}.",
            DistributedWarning,
            stacklevel=2,
        )
        return False
    if dist.is_initialized():
        return False
    env = _read_env(world)
    timeout = _timeout(timeout_s)
    if device.type == "cuda":
        _check_cuda(env)
    start = time.monotonic()  # one deadline for the whole join
    init = functools.partial(_init, _meet(env, timeout, start), env, device)
    try:
        _call_interruptibly(init, env, timeout, start, "the process group was not created")
    finally:
        del init  # the group keeps its own reference to the store; a failed join closes it
    return True


def leave_process_group(started: bool) -> None:
    r"""Destroys the default process group if :func:`join_process_group` started it
    (``started``), which closes the store this process hosted.

    Args:
        started (bool): What :func:`join_process_group` returned.

    Examples::

        >>> leave_process_group(False)   # nothing was started: nothing to do
    """
    if started and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------
# the environment
# ---------------------------------------------------------------------------


def _int_var(
    name: str, default: str | None = None, *, low: int = 0, high: int | None = None
) -> int:
    raw = os.environ.get(name, default)
    if raw is None or not raw.strip():
        world = os.environ.get("WORLD_SIZE")
        raise InputError(
            f"{name} is not set although WORLD_SIZE={world} asks for several processes; {_FIX}."
        )
    try:
        value = int(raw.strip())
    except ValueError:
        raise InputError(f"{name}={raw!r} is not an integer; {_FIX}.") from None
    if value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise InputError(f"{name}={value} is out of range (it must be {span}); {_FIX}.")
    return value


def _read_env(world: int) -> _Env:
    rank = _int_var("RANK", high=world - 1)
    local_rank = _int_var("LOCAL_RANK", high=world - 1)
    port = _int_var("MASTER_PORT", low=1, high=65535)
    addr = os.environ.get("MASTER_ADDR", "").strip()
    if not addr:
        raise InputError(
            f"MASTER_ADDR is not set although WORLD_SIZE={world} asks for several "
            f"processes; {_FIX}."
        )
    return _Env(rank=rank, world=world, local_rank=local_rank, addr=addr, port=port)


def _timeout(timeout_s: float | None) -> float:
    source = "timeout_s"
    if timeout_s is None:
        raw = os.environ.get(TIMEOUT_ENV)
        if raw is None:
            return DEFAULT_TIMEOUT_S
        source = TIMEOUT_ENV
        try:
            timeout_s = float(raw)
        except ValueError:
            raise InputError(
                f"{TIMEOUT_ENV}={raw!r} is not a number of seconds; set it to a "
                f"positive number, e.g. 60."
            ) from None
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise InputError(
            f"{source}={timeout_s} must be a positive, finite number of seconds, e.g. 60."
        )
    return float(timeout_s)


def _check_cuda(env: _Env) -> None:
    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise InputError(
            f"LOCAL_RANK={env.local_rank} but this machine has {count} CUDA "
            f"device(s); start at most {count} processes per machine, or run on the "
            f"CPU."
        )


# ---------------------------------------------------------------------------
# the rendezvous, in steps that a signal handler can interrupt
# ---------------------------------------------------------------------------


def _meet(env: _Env, timeout: float, start: float) -> Any:
    """Opens the store and waits until every rank checked in; returns the store."""
    hosts = env.rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    if hosts:
        store = _host_store(env, timeout)
    else:
        _wait_for_listener(env, timeout, start)
        store = _call_interruptibly(
            functools.partial(_client_store, env, timeout, start),
            env,
            timeout,
            start,
            "the store there did not answer",
        )
    try:
        _check_in(store, env, timeout, start)
    except RuntimeError as err:  # DistNetworkError: the store went away (its host ended)
        del store
        raise InputError(
            f"{env.describe()}: the store closed while this process waited for "
            f"the others ({_first_line(err)}); {_FIX}."
        ) from None
    except BaseException as err:  # noqa: BLE001 - raised again below
        # closes the store (and the server this process hosts): the frames of the traceback
        # would keep it, and its port, open as long as the error lives
        del store
        raise err.with_traceback(None) from None
    return store


def _host_store(env: _Env, timeout: float) -> Any:
    try:  # binds and returns at once (wait_for_workers=False)
        return dist.TCPStore(
            env.addr, env.port, env.world, True, timedelta(seconds=timeout), wait_for_workers=False
        )
    except (RuntimeError, OSError) as err:  # DistNetworkError: EADDRINUSE, no permission
        raise InputError(
            f"RANK=0 cannot listen on MASTER_PORT={env.port} ({_first_line(err)}); "
            f"choose a free MASTER_PORT, or {_FIX}."
        ) from None


def _client_store(env: _Env, timeout: float, start: float) -> Any:
    left = max(timeout - (time.monotonic() - start), 0.1)
    return dist.TCPStore(
        env.addr, env.port, env.world, False, timedelta(seconds=left), wait_for_workers=False
    )


def _wait_for_listener(env: _Env, timeout: float, start: float) -> None:
    """Waits until something accepts connections at MASTER_ADDR:MASTER_PORT (plain
    sockets: quiet, and every step is short)."""
    while True:
        left = timeout - (time.monotonic() - start)
        if left <= 0:
            raise _timed_out(env, timeout, "nothing listens there")
        try:
            with socket.create_connection((env.addr, env.port), timeout=min(1.0, left)):
                return
        except socket.gaierror as err:
            raise InputError(
                f"MASTER_ADDR={env.addr} is not a known host ({err}); set it to "
                f"the address of the RANK=0 machine, or {_FIX}."
            ) from None
        except OSError:  # refused, unreachable, timed out: the host may come up later
            time.sleep(min(_POLL_S, max(left, 0.0)))


def _check_in(store: Any, env: _Env, timeout: float, start: float) -> None:
    prefix = (
        f"{_KEY}/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/"
        f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    )
    if store.add(f"{prefix}/rank{env.rank}", 1) > 1:
        raise InputError(
            f"two processes have RANK={env.rank} ({env.describe()}); give every "
            f"process its own RANK, or {_FIX}."
        )
    joined = store.add(f"{prefix}/joined", 1)
    while joined < env.world:
        if time.monotonic() - start >= timeout:
            raise _timed_out(env, timeout, f"{joined} of {env.world} processes checked in")
        time.sleep(_POLL_S)
        joined = store.add(f"{prefix}/joined", 0)
    if joined > env.world:
        raise InputError(
            f"{joined} processes checked in at MASTER_ADDR={env.addr} "
            f"MASTER_PORT={env.port} for WORLD_SIZE={env.world}: another job uses "
            f"this port; choose another MASTER_PORT, or {_FIX}."
        )


def _init(store: Any, env: _Env, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(env.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world)


def _call_interruptibly(
    fn: Callable[[], Any], env: _Env, timeout: float, start: float, what: str
) -> Any:
    """Runs ``fn`` (a call that blocks in C++) in a daemon thread while this thread waits
    in short steps, so that signal handlers run and the wait ends by the deadline."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread, raised there
            result["error"] = err

    worker = threading.Thread(target=target, name="captum-unicam-join", daemon=True)
    worker.start()
    while worker.is_alive():
        if time.monotonic() - start >= timeout:
            raise _timed_out(env, timeout, what)
        worker.join(_POLL_S)
    if "error" in result:
        err = result["error"]
        if isinstance(err, (RuntimeError, OSError)):
            raise InputError(
                f"{env.describe()}: the join failed ({_first_line(err)}); {_FIX}."
            ) from err
        raise err
    return result.get("value")


def _timed_out(env: _Env, timeout: float, state: str) -> InputError:
    return InputError(
        f"{env.describe()}: waited {timeout:g} s for the other processes ({state}); "
        f"{_FIX} (or set {TIMEOUT_ENV} to wait longer)."
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__

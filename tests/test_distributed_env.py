"""Joining a torchrun process group from an inherited environment: checked up front, a bounded
wait for absent peers, SIGTERM honoured during the join, a real 2-process gloo join.

Only loopback addresses. Every wait is bounded by a small timeout (3 s)."""

import _thread
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from captum_unicam import _distributed
from captum_unicam._distributed import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    join_process_group,
    leave_process_group,
    rank_and_world,
)
from captum_unicam.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
TIMEOUT = 3.0
SLACK = 5.0  # the brief: ends within timeout + a few seconds
FIX = "unset WORLD_SIZE/RANK to run in one process, or start with torchrun"
VARS = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    TIMEOUT_ENV,
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens on ``port`` any more (a listening socket refuses this bind even with
    SO_REUSEADDR; a closed one in TIME_WAIT does not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_env(rank: int, port: int, world: int = 2, **extra) -> dict:
    env = {
        "WORLD_SIZE": str(world),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    env.update(extra)
    return env


@pytest.fixture
def environ(monkeypatch):
    """Sets the cluster variables for one test (all others of VARS unset)."""
    for name in VARS:
        monkeypatch.delenv(name, raising=False)

    def set_vars(values: dict) -> None:
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)

    return set_vars


@pytest.fixture
def no_sockets(monkeypatch):
    """Any socket or store opened during the test fails it."""

    def boom(*args, **kwargs):
        raise AssertionError("a socket was opened before the environment was checked")

    monkeypatch.setattr(socket, "create_connection", boom)
    monkeypatch.setattr(socket, "socket", boom)
    monkeypatch.setattr(dist, "TCPStore", boom)


# ---------------------------------------------------------------------------
# one process: nothing to join
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("world", [None, "", " ", "1"])
def test_one_process_joins_nothing(environ, no_sockets, world):
    environ({"WORLD_SIZE": world, "RANK": "0"})
    assert join_process_group(CPU) is False
    assert rank_and_world() == (0, 1)
    leave_process_group(False)  # nothing to destroy, no error
    assert not dist.is_initialized()


def test_default_timeout_is_documented_value(environ):
    environ({})
    assert DEFAULT_TIMEOUT_S == 60.0 == _distributed._timeout(None)


# ---------------------------------------------------------------------------
# a malformed environment: one InputError naming the variable, before any socket
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, name",
    [
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc'"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
        ({"RANK": "2"}, "RANK=2"),
        ({"RANK": "-1"}, "RANK=-1"),
        ({"RANK": None}, "RANK is not set"),
        ({"RANK": "one"}, "RANK='one'"),
        ({"LOCAL_RANK": None}, "LOCAL_RANK is not set"),
        ({"LOCAL_RANK": "5"}, "LOCAL_RANK=5"),
        ({"MASTER_PORT": None}, "MASTER_PORT is not set"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000"),
        ({"MASTER_PORT": "0"}, "MASTER_PORT=0"),
        ({"MASTER_PORT": "29500x"}, "MASTER_PORT='29500x'"),
        ({"MASTER_ADDR": None}, "MASTER_ADDR is not set"),
        ({"MASTER_ADDR": " "}, "MASTER_ADDR is not set"),
    ],
)
def test_malformed_environment_before_any_socket(environ, no_sockets, values, name):
    env = cluster_env(0, 29500)
    env.update(values)
    environ(env)
    start = time.monotonic()
    with pytest.raises(InputError) as info:
        join_process_group(CPU, timeout_s=TIMEOUT)
    assert time.monotonic() - start < 1.0
    message = str(info.value)
    assert name in message and FIX in message
    assert "\n" not in message
    assert not dist.is_initialized()


def test_cuda_local_rank_beyond_the_devices(environ, no_sockets, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    environ(cluster_env(1, 29500))
    with pytest.raises(InputError, match=r"LOCAL_RANK=1 but this machine has 1 CUDA device\(s\)"):
        join_process_group(torch.device("cuda"), timeout_s=TIMEOUT)


@pytest.mark.parametrize(
    "raw, timeout_s, name",
    [
        ("abc", None, f"{TIMEOUT_ENV}='abc'"),
        ("0", None, f"{TIMEOUT_ENV}=0.0"),
        ("-3", None, f"{TIMEOUT_ENV}=-3.0"),
        ("inf", None, f"{TIMEOUT_ENV}=inf"),
        (None, float("nan"), "timeout_s=nan"),
        (None, 0.0, "timeout_s=0.0"),
    ],
)
def test_malformed_timeout_before_any_socket(environ, no_sockets, raw, timeout_s, name):
    environ({**cluster_env(0, 29500), TIMEOUT_ENV: raw})
    with pytest.raises(InputError, match="positive|number of seconds") as info:
        join_process_group(CPU, timeout_s=timeout_s)
    assert name in str(info.value)


def test_timeout_from_environment(environ):
    environ({TIMEOUT_ENV: "2.5"})
    assert _distributed._timeout(None) == 2.5
    assert _distributed._timeout(7) == 7.0  # the argument wins


# ---------------------------------------------------------------------------
# absent peers: the join ends after the timeout with one line, the port is closed again
# ---------------------------------------------------------------------------


def timed_join(timeout_s=TIMEOUT):
    start = time.monotonic()
    with pytest.raises(InputError) as info:
        join_process_group(CPU, timeout_s=timeout_s)
    return time.monotonic() - start, str(info.value)


def test_rank0_alone_ends_after_timeout(environ):
    port = free_port()
    environ(cluster_env(0, port))
    elapsed, message = timed_join()
    assert TIMEOUT - 0.1 <= elapsed <= TIMEOUT + SLACK
    assert message == (
        f"WORLD_SIZE=2 RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT={port}: waited 3 s "
        f"for the other processes (1 of 2 processes checked in); {FIX} (or set "
        f"{TIMEOUT_ENV} to wait longer)."
    )
    assert not dist.is_initialized()
    assert port_is_free(port)  # the store this process hosted is closed


def test_rank0_alone_timeout_from_environment(environ):
    environ({**cluster_env(0, free_port()), TIMEOUT_ENV: "1"})
    start = time.monotonic()
    with pytest.raises(InputError, match="waited 1 s"):
        join_process_group(CPU)
    assert 0.9 <= time.monotonic() - start <= 1 + SLACK


def test_rank1_without_rank0_ends_after_timeout(environ):
    port = free_port()
    environ(cluster_env(1, port))
    elapsed, message = timed_join()
    assert TIMEOUT - 0.1 <= elapsed <= TIMEOUT + SLACK
    assert f"RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT={port}: waited 3 s" in message
    assert "nothing listens there" in message and FIX in message
    assert not dist.is_initialized()


def test_rank1_at_a_silent_listener_ends_after_timeout(environ):
    """Something accepts at MASTER_PORT but never answers the store's handshake: the wait
    in C++ is still bounded."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        environ(cluster_env(1, server.getsockname()[1]))
        elapsed, message = timed_join()
    abandoned_threads_end()
    assert TIMEOUT - 0.1 <= elapsed <= TIMEOUT + SLACK
    assert "waited 3 s" in message and "the store there did not answer" in message


def abandoned_threads_end():
    """The listener is closed: the handshake left blocked in C++ ends with torch's timeout.
    Waiting for it keeps it from returning while this interpreter exits (which aborts)."""
    for thread in threading.enumerate():
        if thread.name == "captum-unicam-join":
            thread.join(timeout=20)
            assert not thread.is_alive()


def test_rank0_under_torchrun_uses_the_agents_store(environ):
    """TORCHELASTIC_USE_AGENT_STORE=True: the agent hosts the store at MASTER_PORT, and rank 0
    connects to it like every rank (hosting it would find the port taken)."""
    agent = dist.TCPStore("127.0.0.1", 0, 2, True, wait_for_workers=False)
    environ(
        {
            **cluster_env(0, agent.port),
            "TORCHELASTIC_USE_AGENT_STORE": "True",
            "TORCHELASTIC_RESTART_COUNT": "2",
        }
    )
    start = time.monotonic()
    with pytest.raises(InputError, match=r"waited 1 s .*\(1 of 2 processes checked in\)"):
        join_process_group(CPU, timeout_s=1.0)
    assert time.monotonic() - start < 1 + SLACK
    assert agent.add(f"{_distributed._KEY}//2/rank0", 0) == 1
    assert agent.add(f"{_distributed._KEY}//2/joined", 0) == 1


def test_rank1_when_the_store_closes(environ):
    """The host of the store (rank 0) ends while rank 1 waits: one line, at once."""
    host = [dist.TCPStore("127.0.0.1", 0, 2, True, wait_for_workers=False)]
    environ(cluster_env(1, host[0].port))
    closer = threading.Timer(0.5, host.clear)  # drops the only reference: the server stops
    closer.start()
    try:
        elapsed, message = timed_join(timeout_s=10.0)
    finally:
        closer.cancel()
    assert elapsed < 5.0
    assert "RANK=1" in message and "the store closed while this process waited" in message
    assert FIX in message and "\n" not in message


def test_rank0_port_in_use(environ):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        environ(cluster_env(0, port))
        elapsed, message = timed_join()
    assert elapsed < 2.0
    assert f"RANK=0 cannot listen on MASTER_PORT={port}" in message
    assert "free MASTER_PORT" in message


def test_rank1_unknown_master_addr(environ):
    environ({**cluster_env(1, free_port()), "MASTER_ADDR": "no-such-host.invalid"})
    elapsed, message = timed_join()
    assert elapsed < TIMEOUT + SLACK
    assert "MASTER_ADDR=no-such-host.invalid is not a known host" in message


def test_duplicate_rank(environ):
    """Two processes with RANK=1 at one store: the second is told, not left waiting."""
    port = free_port()
    environ(cluster_env(0, port, world=3))
    errors = []

    def rank0():
        try:
            join_process_group(CPU, timeout_s=TIMEOUT)
        except InputError as err:
            errors.append(str(err))

    host = threading.Thread(target=rank0)
    host.start()
    client = None
    for _ in range(50):  # the other rank 1 checks in at the store rank 0 hosts
        try:
            client = dist.TCPStore("127.0.0.1", port, 3, False, wait_for_workers=False)
            break
        except RuntimeError:
            time.sleep(0.1)
    assert client is not None
    client.add(f"{_distributed._KEY}//0/rank1", 1)
    os.environ["RANK"], os.environ["LOCAL_RANK"] = "1", "1"  # restored by the fixture
    with pytest.raises(InputError, match="two processes have RANK=1"):
        _distributed._check_in(client, _distributed._read_env(3), TIMEOUT, time.monotonic())
    host.join()
    assert errors and "waited 3 s" in errors[0]


# ---------------------------------------------------------------------------
# an interrupt in this process (KeyboardInterrupt, as from a SIGTERM handler): ends the join
# at once and closes what it opened
# ---------------------------------------------------------------------------


def interrupted_join(after_s: float = 0.5) -> float:
    timer = threading.Timer(after_s, _thread.interrupt_main)
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            join_process_group(CPU, timeout_s=TIMEOUT)
    finally:
        timer.cancel()
    return time.monotonic() - start - after_s


def test_interrupt_while_rank0_waits_closes_its_store(environ):
    port = free_port()
    environ(cluster_env(0, port))
    assert interrupted_join() < 1.0
    assert not dist.is_initialized()
    assert port_is_free(port)


def test_interrupt_during_store_handshake(environ):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        environ(cluster_env(1, server.getsockname()[1]))
        assert interrupted_join() < 1.0  # the handshake blocks in C++; the wait does not
    abandoned_threads_end()
    assert not dist.is_initialized()


# ---------------------------------------------------------------------------
# SIGTERM during the join (as the command line handles it: KeyboardInterrupt, exit 130)
# ---------------------------------------------------------------------------

JOINER = textwrap.dedent("""
    import signal, sys, time
    import torch
    from captum_unicam._distributed import join_process_group, leave_process_group

    def on_term(signum, frame):
        raise KeyboardInterrupt("terminated by signal SIGTERM")

    signal.signal(signal.SIGTERM, on_term)
    print("joining", flush=True)
    try:
        leave_process_group(join_process_group(torch.device("cpu"), timeout_s=float(sys.argv[1])))
    except KeyboardInterrupt as err:  # the clock is the machine's, shared with the test
        print(f"interrupted: {err} at {time.monotonic()}", file=sys.stderr, flush=True)
        sys.exit(130)
""")


def spawn(tmp_path, env: dict, timeout_s: float, script: str = JOINER) -> subprocess.Popen:
    path = tmp_path / "joiner.py"
    path.write_text(script)
    full = {k: v for k, v in os.environ.items() if k not in VARS}
    full.update(env, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, str(path), str(timeout_s)],
        env=full,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def terminate_during_join(proc: subprocess.Popen) -> tuple:
    """Sends SIGTERM one second into the join; returns when it was sent and the seconds until
    the process ended."""
    try:
        assert proc.stdout.readline().strip() == "joining"
        time.sleep(1.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        return sent, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "rank, listener",
    [(0, False), (1, False), (1, True)],
    ids=["rank0-waits-for-peers", "rank1-waits-for-rank0", "rank1-in-store-handshake"],
)
def test_sigterm_ends_the_join(tmp_path, rank, listener):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        if listener:  # accepts, never answers: the join blocks in the C++ handshake
            server.bind(("127.0.0.1", 0))
            server.listen(8)
            port = server.getsockname()[1]
        else:
            port = free_port()
        proc = spawn(tmp_path, cluster_env(rank, port), timeout_s=60)
        sent, elapsed = terminate_during_join(proc)
    stderr = proc.stderr.read()
    assert proc.returncode == 130, stderr
    caught = re.search(r"interrupted: terminated by signal SIGTERM at ([0-9.]+)", stderr)
    assert caught, stderr
    assert float(caught.group(1)) - sent < 1.0  # handled at once; the rest is the exit
    assert elapsed < 3.0, elapsed
    if rank == 0:
        assert port_is_free(port)


# ---------------------------------------------------------------------------
# a real join: two processes, gloo, loopback
# ---------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import socket, sys
    import torch
    import torch.distributed as dist
    from captum_unicam._distributed import join_process_group, leave_process_group, rank_and_world

    started = join_process_group(torch.device("cpu"), timeout_s=float(sys.argv[1]))
    rank, world = rank_and_world()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    again = join_process_group(torch.device("cpu"), timeout_s=float(sys.argv[1]))
    leave_process_group(started)
    print(started, again, rank, world, float(value), dist.is_initialized(), rank_and_world())
""")


def test_two_processes_join_and_leave(tmp_path):
    port = free_port()
    procs = [
        spawn(tmp_path, cluster_env(rank, port), timeout_s=30, script=WORKER) for rank in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, err
        # started, already joined, rank, world, 1 + 2 summed over ranks, left, outside
        assert out.split("\n")[0] == f"True False {rank} 2 3.0 False (0, 1)"
    assert port_is_free(port)  # rank 0's store is closed with the group


# ---------------------------------------------------------------------------
# the command line in an inherited cluster environment (quantify joins before loading)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_pair(tmp_path_factory):
    from captum_unicam.models import build_model, save_checkpoint

    folder = tmp_path_factory.mktemp("cluster-pair")
    paths = []
    for seed, name in ((0, "student.pt"), (1, "base.pt")):
        torch.manual_seed(seed)
        model = build_model("small_resnet_s", 4, width=2)
        save_checkpoint(
            folder / name,
            model,
            arch="small_resnet_s",
            num_classes=4,
            recipe={"image_size": 32, "normalize": "none"},
        )
        paths.append(str(folder / name))
    return paths


def quantify_process(tmp_path, cli_pair, env: dict) -> subprocess.Popen:
    student, base = cli_pair
    argv = [
        sys.executable,
        "-m",
        "captum_unicam",
        "quantify",
        "--student",
        student,
        "--base",
        base,
        "--data",
        "controlled",
        "--out",
        str(tmp_path / "report"),
        "--limit",
        "10",
        "--batch-size",
        "5",
        "--layers",
        "L4",
        "--one-hot",
        "--no-progress",
        "--maps",
        "gradcam",
        "--n-bootstrap",
        "20",
    ]
    full = {k: v for k, v in os.environ.items() if k not in VARS}
    full.update(env, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        argv, env=full, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.parametrize("local_rank", ["0", None], ids=["torchrun-like", "no-LOCAL_RANK"])
def test_quantify_without_its_peers_ends_in_one_line(tmp_path, cli_pair, local_rank):
    """Before: quantify loaded the models, then waited in torch's init_process_group for
    30 minutes (no output, SIGTERM ignored). Now: exit 2 after the 3 s timeout, one line."""
    port = free_port()
    env = {**cluster_env(0, port), "LOCAL_RANK": local_rank, TIMEOUT_ENV: "3"}
    env = {k: v for k, v in env.items() if v is not None}
    start = time.monotonic()
    proc = quantify_process(tmp_path, cli_pair, env)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.strip().splitlines()
    assert proc.returncode == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("captum-unicam quantify: error: ")
    if local_rank is None:
        assert "LOCAL_RANK is not set" in lines[0]
    else:
        assert f"MASTER_PORT={port}: waited 3 s for the other processes" in lines[0]
        assert TIMEOUT_ENV in lines[0]
    # the 3 s wait + the interpreter's start and exit on a busy machine
    assert time.monotonic() - start < 10 + 20
    assert not (tmp_path / "report").exists() and port_is_free(port)


def wait_for_listener(port: int, proc: subprocess.Popen, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("quantify never listened on MASTER_PORT")


def test_sigterm_during_the_quantify_join_exits_130(tmp_path, cli_pair):
    port = free_port()
    proc = quantify_process(tmp_path, cli_pair, {**cluster_env(0, port), TIMEOUT_ENV: "60"})
    try:
        wait_for_listener(port, proc)
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        "captum-unicam quantify: interrupted (terminated by signal SIGTERM)"
    ], err
    assert elapsed < 20.0  # handled at once; the rest is the interpreter's exit on a busy machine
    assert port_is_free(port) and not (tmp_path / "report").exists()

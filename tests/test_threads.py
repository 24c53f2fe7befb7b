"""Torch threads (common/threads.py) follow the CPUs this process may use and what other processes keep busy; an
explicit setting wins. The benchmark's busy neighbours (common/neighbours.py) never outlive their block."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from cli.main import main
from client import app as client_app
from common.federation import task
from common.neighbours import alive, busy_neighbours
from common.protocol import ARRAYS, CONFIG, FedConfig
from common.threads import ENV_THREADS, PLAN, CpuSample, ThreadPlan, choose_threads, others_busy, read_busy_seconds
from tests.fed_fakes import fake_client_data, install_fake, set_task_identity

ROOT = Path(__file__).resolve().parent.parent
CPUS = sorted(os.sched_getaffinity(0))
TWO_CPUS = pytest.mark.skipif(len(CPUS) < 2, reason="needs a process allowed on 2 CPUs")

# A child process pinned to the CPUs given (as `taskset -c` would pin it) that reports the count it chose and the
# count torch then runs with. "idle": a sampler that sees no other load, so only the affinity decides.
CHILD = textwrap.dedent("""
    import json, sys, time
    import torch
    from common.threads import PLAN, CpuSample, ThreadPlan
    threads, idle = json.loads(sys.argv[1])
    plan = ThreadPlan(sampler=lambda cpus: CpuSample(time.monotonic(), 0.0, 0.0)) if idle else PLAN
    chosen = plan.apply(threads)
    plan.refresh(force=True)
    print(json.dumps({"chosen": chosen, "torch": torch.get_num_threads(), "after_refresh": plan.threads}))
""")


@pytest.fixture(autouse=True)
def _no_thread_setting(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """conftest's FEDADAPT_THREADS=1 would make every choice here an explicit one; afterwards the process's plan
    is one explicit thread again, so that no later test's training steps start following the free CPUs."""
    monkeypatch.delenv(ENV_THREADS, raising=False)
    yield
    PLAN.apply(1)


def _child(cpus: set[int], threads: int = 0, idle: bool = True, env_threads: str | None = None) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if k != ENV_THREADS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if env_threads is not None:
        env[ENV_THREADS] = env_threads
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([threads, idle])], env=env, check=True,
                         capture_output=True, text=True, timeout=120,
                         preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_threads_follow_the_cpus_the_process_may_use() -> None:
    """Pinned to one CPU a process takes one thread, pinned to all of them one per CPU (no other load)."""
    # Execute
    one = _child({CPUS[0]})
    every = _child(set(CPUS))
    measured = _child({CPUS[0]}, idle=False)  # the real /proc/stat sampler: one CPU is one thread, loaded or not
    # Assert
    assert one == {"chosen": 1, "torch": 1, "after_refresh": 1}
    assert every == {"chosen": len(CPUS), "torch": len(CPUS), "after_refresh": len(CPUS)}
    assert measured["chosen"] == measured["torch"] == 1


def test_an_explicit_setting_wins() -> None:
    """--threads / client-threads N beats the affinity and FEDADAPT_THREADS; FEDADAPT_THREADS beats the choice;
    a refresh never changes an explicit count."""
    # Execute
    argument = _child({CPUS[0]}, threads=3)
    environment = _child({CPUS[0]}, env_threads="2")
    both = _child(set(CPUS), threads=1, env_threads="2")
    # Assert
    assert argument == {"chosen": 3, "torch": 3, "after_refresh": 3}
    assert environment == {"chosen": 2, "torch": 2, "after_refresh": 2}
    assert both == {"chosen": 1, "torch": 1, "after_refresh": 1}


@pytest.mark.parametrize(("allowed", "busy", "cap", "threads"), [
    (2, 0.0, 0, 2), (2, 0.2, 0, 2),  # background noise up to a quarter core costs nothing
    (2, 0.3, 0, 1), (2, 0.67, 0, 1), (2, 1.0, 0, 1),  # a neighbour that has a core (or shares one) costs it
    (2, 2.5, 0, 1),  # never fewer than one
    (8, 1.0, 0, 7), (8, 1.3, 0, 6), (8, 0.0, 2, 2), (8, 7.0, 2, 1),  # cap: a simulation's --cpus-per-client
])
def test_choose_threads(allowed: int, busy: float, cap: int, threads: int) -> None:
    """One thread per CPU left free of others' load (a share above a quarter core costs the CPU), at most cap."""
    assert choose_threads(allowed, busy, cap) == threads


def test_others_busy_is_everyones_time_less_ours(tmp_path: Path) -> None:
    """/proc/stat's busy ticks (all but idle and iowait) of the allowed CPUs only, less this process's own time."""
    # Prepare
    tick = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    stat.write_text(f"cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 {tick} 0 {tick} 50 7 0 0 0 0 0\n"
                    f"cpu1 {3 * tick} 0 0 0 0 0 0 0 0 0\nintr 1 2\n")
    # Execute
    busy0 = read_busy_seconds([0], str(stat))
    both = read_busy_seconds([0, 1], str(stat))
    shared = others_busy(CpuSample(10.0, 1.0, 2.0), CpuSample(12.0, 4.0, 2.5))  # 3 s busy, 0.5 s ours, 2 s
    # Assert
    assert busy0 == 2.0 and both == 5.0
    assert shared == pytest.approx(1.25)
    assert read_busy_seconds([0], str(tmp_path / "missing")) is None


@TWO_CPUS
def test_a_busy_neighbour_costs_a_thread() -> None:
    """Beside one spinning process the real measurement leaves its CPU to it; once it stops, a refresh takes the
    CPU back when the machine is otherwise quiet (or keeps what is still busy)."""
    # Prepare
    chosen: list[int] = []
    plan = ThreadPlan(set_threads=chosen.append)
    # Execute
    with busy_neighbours(1):
        time.sleep(0.3)  # the neighbour is running, not starting up
        beside = plan.apply(0)
    # Assert
    assert beside <= len(CPUS) - 1 and chosen == [beside]


@TWO_CPUS
def test_a_new_cap_or_mode_applies_at_once() -> None:
    """Decisions closer together than a measurement can tell still honour the cap and mode asked for now."""
    # Prepare
    plan = ThreadPlan(set_threads=lambda n: None, sampler=lambda cpus: CpuSample(time.monotonic(), 0.0, 0.0))
    # Execute
    free = plan.apply(0)
    capped = plan.apply(0, cap=1)
    explicit = plan.apply(3)
    again = plan.apply(0)
    # Assert
    assert (free, capped, explicit, again) == (len(CPUS), 1, 3, len(CPUS))


def test_refresh_leaves_a_count_nobody_chose_to_follow() -> None:
    """Code that never asked to follow the free CPUs (a test that set one thread itself) keeps its own count."""
    chosen: list[int] = []
    plan = ThreadPlan(set_threads=chosen.append)
    assert plan.refresh(force=True) == 0 and chosen == []


@pytest.mark.parametrize(("value", "message"), [("two", "is not an integer"), ("-1", "must be >= 0")])
def test_bad_environment_value_is_named(value: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """FEDADAPT_THREADS that is no count is refused with the variable's name and value."""
    monkeypatch.setenv(ENV_THREADS, value)
    with pytest.raises(ValueError, match=f"{ENV_THREADS}=.*{message}"):
        ThreadPlan(set_threads=lambda n: None).apply(0)


def test_negative_client_threads_and_cpus_are_refused() -> None:
    """The run config's client-threads / client-cpus are counts; 0 means choose."""
    with pytest.raises(ValueError, match="client-threads must be >= 0"):
        FedConfig(client_threads=-1)
    with pytest.raises(ValueError, match="client-cpus must be >= 0"):
        FedConfig(client_cpus=-2)


# -- busy neighbours -------------------------------------------------------------------------------------------
def _neighbours_of(parent: int) -> list[int]:
    """Live processes running the neighbour loop whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(stat[1]) == parent and stat[0] != "Z" and "getppid" in cmdline:
            found.append(int(entry.name))
    return found


def _gone(pids: list[int], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def test_neighbours_stop_after_the_block_and_on_an_error() -> None:
    """Inside the block the neighbours run; after it (normally or through an exception) none is left."""
    # Execute
    with busy_neighbours(2) as pids:
        running = [alive(p) for p in pids]
    with pytest.raises(RuntimeError), busy_neighbours(1) as failed:
        raise RuntimeError("a row failed")
    # Assert
    assert running == [True, True]
    assert not any(alive(p) for p in [*pids, *failed])
    assert _neighbours_of(os.getpid()) == []


def _start(code: list[str]) -> tuple[subprocess.Popen[str], list[int]]:
    """A child process running `code` (a command line); returns it once its two neighbours run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.Popen(code, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(pids := _neighbours_of(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pids) == 2, f"the neighbours never ran: {proc.stderr.read() if proc.stderr else ''}"
    return proc, pids


# Ctrl-C's handler set explicitly: a process started from a background job inherits SIGINT ignored (CI may run so)
BLOCK = ("import signal, time\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
         "from common.neighbours import busy_neighbours\nwith busy_neighbours(2):\n    time.sleep(600)\n")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_neighbours_do_not_outlive_ctrl_c_or_a_killed_parent(sig: signal.Signals) -> None:
    """Ctrl-C runs the block's cleanup; a parent killed outright (no cleanup runs) leaves neighbours that notice
    and exit on their own."""
    # Prepare
    proc, pids = _start([sys.executable, "-c", BLOCK])
    # Execute
    proc.send_signal(sig)
    proc.wait(timeout=30)
    # Assert
    assert _gone(pids), f"neighbours {pids} still run after {sig.name}"


def test_bench_client_neighbours_are_stopped_on_ctrl_c() -> None:
    """`fedadapt bench client --neighbour 2` interrupted while it runs: its neighbours are gone too."""
    # Prepare
    proc, pids = _start([sys.executable, "-m", "cli.main", "bench", "client", "--neighbour", "2", "--backbone",
                         "tiny", "--rows", "ours-seq", "--repeats", "50", "--pairs", "24", "--users", "120",
                         "--products", "150", "--clients", "2", "--eval-users", "8"])
    # Execute
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    # Assert
    assert _gone(pids)


def test_bench_client_runs_beside_its_neighbours(capsys: pytest.CaptureFixture[str]) -> None:
    """--neighbour 1: the result says so, every timed update left the neighbour its CPU, and nothing the
    benchmark started is left."""
    # Execute
    rc = main(["bench", "client", "--neighbour", "1", "--backbone", "tiny", "--rows", "ours-seq", "--repeats", "1",
               "--pairs", "24", "--users", "120", "--products", "150", "--clients", "2", "--eval-users", "8", "--json"])
    # Assert
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["machine"]["neighbours"] == 1
    assert result["rows"]["ours-seq"]["threads"] and max(result["rows"]["ours-seq"]["threads"]) <= max(1, len(CPUS) - 1)
    torch.set_num_threads(1)
    assert _neighbours_of(os.getpid()) == []



# -- where the count is applied ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("run_config", "threads"), [
    ({"client-threads": 2}, 2),  # explicit: the run config's count, whatever the CPUs
    ({"client-threads": 0, "client-cpus": 1}, 1),  # follow the free CPUs, at most the simulation's cpus-per-client
])
def test_client_app_train_uses_the_run_configs_threads(run_config: dict[str, int], threads: int) -> None:
    """A ClientApp train message sets the process's torch threads from client-threads / client-cpus."""
    # Prepare
    set_task_identity()
    cfg = FedConfig(data_dir="/fake/data", backbone="tiny", adapter_kind="lora", batch_size=4, **{
        k.replace("-", "_"): v for k, v in run_config.items()})
    data = fake_client_data(0, {"region": "EU", "season": "regular"})
    install_fake(cfg, 0, 2, data)
    sent: dict[str, np.ndarray] = task.initial_state(cfg, data.adapter_names)
    msg = Message(RecordDict({ARRAYS: ArrayRecord({k: Array(v) for k, v in sent.items()}),
                              CONFIG: ConfigRecord({"server-round": 1})}), 100, "train")
    context = Context(run_id=1, node_id=100, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config=cfg.to_run_config())
    try:
        # Execute
        client_app.app(msg, context)
        # Assert
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(1)


def test_train_refuses_a_negative_thread_count(capsys: pytest.CaptureFixture[str]) -> None:
    """`fedadapt train --threads -1` is refused by the parser, naming the value."""
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", "d", "--mode", "global-adapter", "--out", "o", "--threads", "-1"])
    assert exit_.value.code == 2 and "-1 must be >= 0" in capsys.readouterr().err

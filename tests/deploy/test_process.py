"""Detached processes: a service and the children it spawns stop together; memory and logs are readable."""

from __future__ import annotations

import time
from pathlib import Path

from deploy.process import LaunchSpec, descendants, is_alive, read_pid, rss_mb, spawn, stop, tail

# A parent that ignores SIGTERM and keeps a child: stop() must still leave nothing behind.
STUBBORN = ["sh", "-c", "trap '' TERM; sleep 300 & echo started:$$; wait"]


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_spawn_records_pid_and_stop_ends_the_whole_group(tmp_path: Path) -> None:
    log, pid_file = tmp_path / "svc.log", tmp_path / "run" / "svc.pid"
    pid = spawn(LaunchSpec(argv=STUBBORN), log, pid_file)
    assert read_pid(pid_file) == pid
    wait_for(lambda: f"started:{pid}" in tail(log))  # the shell has forked its child
    children = descendants(pid)
    assert children, "the shell's sleep child should be visible"
    assert rss_mb(pid) is not None and rss_mb(pid) > 0

    stop(pid, timeout_s=1.0)
    assert not is_alive(pid)
    assert not any(is_alive(child) for child in children)
    assert read_pid(pid_file) is None
    assert not pid_file.exists(), "a stale pid file is cleaned up"


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(log, 3) == "line 97\nline 98\nline 99\n"
    assert "no log" in tail(tmp_path / "missing.log")

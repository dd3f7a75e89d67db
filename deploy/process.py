"""Detached service processes: launch, pid files, stop, memory, log tails.

Every service runs in its own session (process group), so stopping it also stops the children it spawned
(Elasticsearch's server JVM, Triton's Python backend stubs), and the CLI that started it may exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one server process."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the caller's environment
    cwd: Path | None = None
    user: str | None = None  # run as this user instead of the caller


def spawn(spec: LaunchSpec, log_path: Path, pid_path: Path | None = None) -> int:
    """Start ``spec`` detached from the caller, stdout+stderr appended to ``log_path``; returns its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(spec.argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            spec.argv,
            env={**os.environ, **spec.env},
            cwd=spec.cwd,
            user=spec.user,
            group=spec.user,
            extra_groups=[] if spec.user else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if pid_path is not None:
        pid_path.parent.mkdir(parents=True, exist_ok=True)
        pid_path.write_text(f"{process.pid}\n")
    return process.pid


def is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited already


def read_pid(pid_path: Path) -> int | None:
    """The pid recorded in ``pid_path`` if that process still runs; a stale file is removed."""
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None
    if is_alive(pid):
        return pid
    pid_path.unlink(missing_ok=True)
    return None


def stop(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM the process group led by ``pid``, wait, then SIGKILL whatever is left."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        members = [pid, *descendants(pid)]
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        for member in members:  # children that left the group still belong to the service
            try:
                os.kill(member, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _reap(pid)
            if not any(is_alive(m) for m in members):
                return
            time.sleep(0.1)


def _reap(pid: int) -> None:
    # Only a process started by this very interpreter is our child; reaping others is a no-op.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` and all its descendants, in MiB."""
    total_kb = 0
    for member in [pid, *descendants(pid)]:
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
    return round(total_kb / 1024, 1) if total_kb else None


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port nothing listens on right now (for a second, throw-away server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError:
        return f"(no log at {path})"

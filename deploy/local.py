"""The local stack: ``python -m deploy.local up [--only kafka,redis] | status [--json] | down [--only …]``.

Kafka, Elasticsearch, Redis and Triton run as detached processes (Label Studio too, on demand: ``up --only
label-studio``) with their data, logs and downloads under
``settings.home`` (default ``~/.cache/postlens``). ``up`` reuses whatever already answers on a service's port and
records (pid file) only what it started itself; ``down`` stops only those.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time

from pydantic import BaseModel

from deploy.process import is_alive, port_open, read_pid, rss_mb, spawn, stop, tail
from deploy.services import Service
from deploy.services.elasticsearch import Elasticsearch
from deploy.services.kafka import Kafka
from deploy.services.label_studio import LabelStudio
from deploy.services.redis import Redis
from deploy.services.triton import Triton, triton_command, triton_probe
from postlens.settings import Settings, get_settings

__all__ = ["SERVICES", "ServiceStatus", "Stack", "StackError", "StartError", "main", "triton_command", "triton_probe"]

SERVICES: dict[str, type[Service]] = {
    "kafka": Kafka,
    "elasticsearch": Elasticsearch,
    "redis": Redis,
    "triton": Triton,
    "label-studio": LabelStudio,
}
PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 10.0


class ServiceStatus(BaseModel):
    name: str
    up: bool
    endpoint: str
    version: str | None = None
    pid: int | None = None  # None when the process answering was not started by deploy.local
    managed: bool = False  # started by deploy.local (now or by an earlier `up`), so `down` stops it
    started: bool = False  # started by this very `up` call
    rss_mb: float | None = None  # the process and its children
    start_s: float | None = None  # launch → healthy, in this `up` call
    prepare_s: float | None = None  # downloads, install, configuration, in this `up` call
    log: str

    def summary(self) -> dict[str, object]:
        """The ``status --json`` entry."""
        return self.model_dump(include={"up", "endpoint", "version", "pid", "managed", "rss_mb"})


class StartError(RuntimeError):
    def __init__(self, service: Service, reason: str) -> None:
        super().__init__(
            f"{service.name} failed to start: {reason}\n"
            f"log: {service.log_path}\n--- last lines ---\n{tail(service.log_path)}"
        )
        self.service = service.name


class StackError(RuntimeError):
    """One or more services failed to start (the others were left running)."""

    def __init__(self, failures: list[StartError], running: dict[str, ServiceStatus]) -> None:
        super().__init__("\n\n".join(str(f) for f in failures))
        self.services = [f.service for f in failures]
        self.running = running


class Stack:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.services = {name: cls(self.settings) for name, cls in SERVICES.items()}

    def _select(self, names: list[str] | None, on_demand: bool = True) -> list[Service]:
        """The services named (all when None; without the on-demand ones unless ``on_demand``)."""
        unknown = set(names or []) - set(self.services)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; choose from {list(self.services)}")
        if names is None:
            return [svc for svc in self.services.values() if on_demand or not svc.on_demand]
        return [svc for name, svc in self.services.items() if name in names]

    def prepare(self, services: list[str] | None = None) -> None:
        """Download, install and configure the selected services without starting any (idempotent): a caller that
        needs the machine's CPU first, as the demo's training does, gets the downloads done meanwhile."""
        for svc in self._select(services, on_demand=False):
            svc.prepare()

    def up(self, services: list[str] | None = None) -> dict[str, ServiceStatus]:
        """Start (or reuse) the services concurrently (None: all but the on-demand ones); raises StackError naming
        every one that failed."""
        return asyncio.run(self.up_async(services))

    async def up_async(self, services: list[str] | None = None) -> dict[str, ServiceStatus]:
        selected = self._select(services, on_demand=False)
        results = await asyncio.gather(*(self._up_one(svc) for svc in selected), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if unexpected := [f for f in failures if not isinstance(f, StartError)]:
            raise unexpected[0]
        statuses = {r.name: r for r in results if isinstance(r, ServiceStatus)}
        if failures:
            raise StackError(failures, statuses)  # type: ignore[arg-type]
        return statuses

    async def _up_one(self, svc: Service) -> ServiceStatus:
        pid = read_pid(svc.pid_path)
        if version := await _probe(svc):
            return self._status(svc, version, pid)
        if pid is None and port_open(svc.port):
            raise StartError(svc, f"port {svc.port} is taken by a process that does not answer as {svc.name}")
        prepare_s = None
        started = pid is None
        if pid is None:
            t0 = time.monotonic()
            try:
                await asyncio.to_thread(svc.prepare)
            except Exception as exc:  # download/install/config problems: report them as this service's failure
                raise StartError(svc, f"preparing: {exc}") from exc
            prepare_s = round(time.monotonic() - t0, 1)
            pid = spawn(svc.launch_spec(), svc.log_path, svc.pid_path)
        t0 = time.monotonic()
        deadline = t0 + svc.start_timeout_s
        while time.monotonic() < deadline:
            if not is_alive(pid):
                svc.pid_path.unlink(missing_ok=True)
                raise StartError(svc, f"process {pid} exited")
            if version := await _probe(svc):
                status = self._status(svc, version, pid)
                return status.model_copy(
                    update={"started": started, "start_s": round(time.monotonic() - t0, 1), "prepare_s": prepare_s}
                )
            await asyncio.sleep(PROBE_INTERVAL_S)
        raise StartError(svc, f"not healthy after {svc.start_timeout_s:.0f}s (pid {pid} still runs)")

    def _status(self, svc: Service, version: str | None, pid: int | None) -> ServiceStatus:
        return ServiceStatus(
            name=svc.name,
            up=version is not None,
            endpoint=svc.endpoint,
            version=version,
            pid=pid,
            managed=pid is not None,
            rss_mb=rss_mb(pid) if pid else None,
            log=str(svc.log_path),
        )

    def status(self, services: list[str] | None = None) -> dict[str, ServiceStatus]:
        async def probe_all() -> list[ServiceStatus]:
            selected = self._select(services, on_demand=False)
            versions = await asyncio.gather(*(_probe(svc) for svc in selected))
            return [self._status(svc, v, read_pid(svc.pid_path)) for svc, v in zip(selected, versions, strict=True)]

        return {status.name: status for status in asyncio.run(probe_all())}

    def down(self, services: list[str] | None = None) -> list[str]:
        """Stop the selected services that deploy.local started; returns their names."""
        stopped = []
        for svc in reversed(self._select(services)):
            pid = read_pid(svc.pid_path)
            if pid is not None:
                stop(pid)
                stopped.append(svc.name)
            svc.pid_path.unlink(missing_ok=True)
        return stopped


async def _probe(svc: Service) -> str | None:
    """The service's version, or None if it does not answer in time (a port held by something else may hang)."""
    try:
        return await asyncio.wait_for(svc.probe(), PROBE_TIMEOUT_S)
    except TimeoutError:
        return None


def _owner(status: ServiceStatus) -> str:
    if status.managed:
        return "deploy.local"
    return "external" if status.up else "-"


def _table(statuses: dict[str, ServiceStatus], show_start: bool = False) -> str:
    rows = [f"{'service':<14}{'up':<5}{'version':<10}{'endpoint':<25}{'pid':>8}{'rss MB':>9}  {'owner':<14}"]
    if show_start:
        rows[0] += "start"
    for s in statuses.values():
        row = (
            f"{s.name:<14}{'yes' if s.up else 'NO':<5}{s.version or '-':<10}{s.endpoint:<25}"
            f"{s.pid or '-':>8}{s.rss_mb or '-':>9}  {_owner(s):<14}"
        )
        if show_start:
            row += "reused" if s.start_s is None else f"{s.start_s:.1f}s"
            row += f" (+{s.prepare_s:.1f}s prepare)" if s.prepare_s is not None else ""
        rows.append(row)
    return "\n".join(rows)


def report_up(stack: Stack, services: list[str] | None = None) -> int:
    """Start the services, print their table and how long it took → exit status (1 when any failed)."""
    t0 = time.monotonic()
    try:
        statuses = stack.up(services)
    except StackError as exc:
        if exc.running:
            print(_table(exc.running, show_start=True))
        print(exc, file=sys.stderr)
        return 1
    print(_table(statuses, show_start=True))
    print(f"stack up in {time.monotonic() - t0:.1f}s (data, logs and downloads under {stack.settings.home})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "status", "down"):
        command = commands.add_parser(name)
        on_demand = ",".join(service for service, cls in SERVICES.items() if cls.on_demand)
        default = "every service" if name == "down" else f"all but the on-demand {on_demand}"
        command.add_argument("--only", help=f"comma-separated subset of {','.join(SERVICES)} (default: {default})")
    commands.choices["status"].add_argument("--json", action="store_true", help="machine-readable status")
    args = parser.parse_args(argv)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # probing a broker that is still starting fails
    only = args.only.split(",") if args.only else None
    stack = Stack()

    if args.command == "up":
        return report_up(stack, only)
    if args.command == "status":
        statuses = stack.status(only)
        if args.json:
            print(json.dumps({name: s.summary() for name, s in statuses.items()}))
        else:
            print(_table(statuses))
        return 0 if all(s.up for s in statuses.values()) else 1
    stopped = stack.down(only)
    print(f"stopped: {', '.join(stopped) or 'nothing (no service started by deploy.local runs)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

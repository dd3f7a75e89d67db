"""Elasticsearch 8.19, one node, security off, from Maven Central's integ-test zip, run as a dedicated user."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

from deploy.download import fetch_verified, maven_url
from deploy.process import LaunchSpec
from deploy.services import Service, get_json, java_home


class Elasticsearch(Service):
    name = "elasticsearch"

    @property
    def port(self) -> int:
        return self.settings.es_port

    @property
    def endpoint(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def distribution(self) -> Path:
        return self.home / f"elasticsearch-{self.settings.elasticsearch_version}"

    def prepare(self) -> None:
        s = self.settings
        zip_path = fetch_verified(
            maven_url(
                s.maven_repo_url,
                "org.elasticsearch.distribution.integ-test-zip",
                "elasticsearch",
                s.elasticsearch_version,
                "zip",
            ),
            s.home / "downloads" / f"elasticsearch-{s.elasticsearch_version}.zip",
        )
        if not (self.distribution / "bin" / "elasticsearch").exists():
            _unzip_with_modes(zip_path, self.home)
        config = self.home / "config"
        if not config.exists():
            shutil.copytree(self.distribution / "config", config)
        for name in ("data", "logs", "tmp"):
            (self.home / name).mkdir(parents=True, exist_ok=True)
        (config / "elasticsearch.yml").write_text(self._config())
        (config / "jvm.options.d").mkdir(exist_ok=True)
        (config / "jvm.options.d" / "heap.options").write_text(f"-Xms{s.es_heap}\n-Xmx{s.es_heap}\n")
        if self._service_user():
            self._ensure_user()
            user = pwd.getpwnam(s.es_user)
            for path in (config, self.home / "data", self.home / "logs", self.home / "tmp"):
                _chown_tree(path, user.pw_uid, user.pw_gid)

    def _service_user(self) -> str | None:
        """Elasticsearch refuses to run as root: root runs it as ``es_user``; anyone else runs it as themselves."""
        return self.settings.es_user if os.geteuid() == 0 else None

    def _config(self) -> str:
        s = self.settings
        lines = {
            "cluster.name": "postlens",
            "node.name": "postlens-local",
            "path.data": self.home / "data",
            "path.logs": self.home / "logs",
            "network.host": "127.0.0.1",
            "http.port": s.es_port,
            "transport.port": s.es_transport_port,
            "discovery.type": "single-node",
            # A nearly full disk must not turn the local indices read-only.
            "cluster.routing.allocation.disk.threshold_enabled": "false",
            "action.destructive_requires_name": "false",  # tests delete their indices by pattern
        }
        if (self.distribution / "modules" / "x-pack-security").exists():
            lines["xpack.security.enabled"] = "false"
        return "".join(f"{key}: {value}\n" for key, value in lines.items())

    def _ensure_user(self) -> None:
        """Create the service user and let it reach the cache dir (e.g. under a 0700 /root)."""
        user = self.settings.es_user
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True
            )
        uid = pwd.getpwnam(user).pw_uid
        gids = {g.gr_gid for g in grp.getgrall() if user in g.gr_mem} | {pwd.getpwnam(user).pw_gid}
        for directory in [self.home, *self.home.parents]:
            info = directory.stat()
            can_traverse = (
                (info.st_uid == uid and info.st_mode & stat.S_IXUSR)
                or (info.st_gid in gids and info.st_mode & stat.S_IXGRP)
                or info.st_mode & stat.S_IXOTH
            )
            if not can_traverse:
                print(f"elasticsearch: allowing others to traverse {directory} (chmod o+x) for user {user}")
                directory.chmod(info.st_mode | stat.S_IXOTH)

    def launch_spec(self) -> LaunchSpec:
        return LaunchSpec(
            argv=[str(self.distribution / "bin" / "elasticsearch")],
            env={
                "ES_JAVA_HOME": str(java_home(self.settings)),
                "ES_PATH_CONF": str(self.home / "config"),
                "ES_TMPDIR": str(self.home / "tmp"),
            },
            cwd=self.home / "logs",  # the stock jvm.options writes gc.log relative to it
            user=self._service_user(),
        )

    async def probe(self) -> str | None:
        # The integ-test distribution has no rest-root module, so `GET /` is not there; the nodes API is core.
        try:
            health = await get_json(f"{self.endpoint}/_cluster/health?wait_for_status=yellow&timeout=1s")
            nodes = await get_json(f"{self.endpoint}/_nodes/_local?filter_path=nodes.*.version")
        except (OSError, ValueError):
            return None
        if health.get("status") not in ("yellow", "green"):
            return None
        return next(iter(nodes["nodes"].values()))["version"]


def _unzip_with_modes(zip_path: Path, dest: Path) -> None:
    """Unpack keeping the executable bits (zipfile drops them), via a temporary dir so a crash leaves no half tree."""
    staging = dest / ".unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as archive:
        for member in archive.infolist():
            path = Path(archive.extract(member, staging))
            mode = member.external_attr >> 16
            if mode:
                path.chmod(mode & 0o7777)
    for top in staging.iterdir():
        shutil.rmtree(dest / top.name, ignore_errors=True)
        top.rename(dest / top.name)
    staging.rmdir()


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)

"""Label Studio (the annotation tool of ``trainer.label``), from PyPI in a virtualenv of its own, SQLite, loopback only.

Its dependencies (Django and many pins) must not mix with PostLens', so it gets its own venv under ``home``, built by
uv from the interpreter PostLens runs on. Started on demand only (``up --only label-studio``): the default stack
does not need it and its first start migrates a database.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from deploy.process import LaunchSpec
from deploy.services import Service, get_json

# Label Studio 1.23 pins sentry-sdk loosely; 3.x removed an API it calls at start.
EXTRA_PINS = ("sentry-sdk<3",)
# Label Studio OSS connects to a Redis on localhost:6379 whenever one answers, and then queues its background jobs
# there for an RQ worker that does not run here: the local stack's Redis (the image cache) would swallow them. This
# settings module sends its queues to a socket that does not exist, so the jobs run in the server process.
SETTINGS_MODULE = "postlens_label_studio_settings"
# Label Studio's settings read django.conf.settings while they load, which re-imports this half-loaded module: the
# base settings come first so that read finds them.
SETTINGS_SOURCE = """from core.settings.base import *  # noqa: F401,F403
from label_studio.core.settings.label_studio import *  # noqa: F401,F403

for _queue in RQ_QUEUES.values():  # noqa: F405
    _queue.pop("HOST", None)
    _queue.pop("PORT", None)
    _queue["UNIX_SOCKET_PATH"] = {socket!r}
"""


class LabelStudio(Service):
    name = "label-studio"
    on_demand = True

    @property
    def port(self) -> int:
        return self.settings.label_studio_port

    @property
    def endpoint(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def start_timeout_s(self) -> float:
        return self.settings.label_studio_start_timeout_s

    @property
    def venv(self) -> Path:
        return self.home / f"venv-{self.settings.label_studio_version}"

    def prepare(self) -> None:
        self._install()
        conf = self.home / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / f"{SETTINGS_MODULE}.py").write_text(SETTINGS_SOURCE.format(socket=str(self.home / "no-redis.sock")))
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        (self.home / "files").mkdir(parents=True, exist_ok=True)
        credentials = self.settings.label_studio_credentials
        if not credentials.exists():
            # Applied when the server creates its first user, i.e. with a fresh data folder.
            credentials.touch(mode=0o600)
            credentials.write_text(json.dumps({"password": secrets.token_urlsafe(16), "token": secrets.token_hex(20)}))

    def _install(self) -> None:
        """The venv, built once per version; a marker file says it is complete (a crash mid-install rebuilds it)."""
        done = self.venv / ".postlens-complete"
        if done.exists():
            return
        uv = str(self.settings.uv or shutil.which("uv") or "")
        if not uv:
            raise RuntimeError("no uv to build Label Studio's virtualenv: set POSTLENS_UV (make does)")
        shutil.rmtree(self.venv, ignore_errors=True)
        # The interpreter PostLens' own venv was made from (make: SYSTEM_PYTHON).
        python = str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")
        subprocess.run([uv, "venv", "--quiet", "--python", python, str(self.venv)], check=True)
        subprocess.run(
            [
                uv, "pip", "install", "--quiet", "--python", str(self.venv / "bin" / "python"),
                f"label-studio=={self.settings.label_studio_version}", *EXTRA_PINS,
            ],
            check=True,
        )  # fmt: skip
        done.touch()

    def launch_spec(self) -> LaunchSpec:
        credentials = json.loads(self.settings.label_studio_credentials.read_text())
        return LaunchSpec(
            argv=[
                str(self.venv / "bin" / "label-studio"), "start", "--no-browser",
                "--internal-host", "127.0.0.1", "--port", str(self.port),
                "--enable-legacy-api-token", "--log-level", "WARNING",
            ],
            env={
                "PYTHONPATH": str(self.home / "conf"),
                "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.home / "data"),
                # Secrets by environment, not argv (which `ps` shows).
                "LABEL_STUDIO_USERNAME": self.settings.label_studio_username,
                "LABEL_STUDIO_PASSWORD": credentials["password"],
                "LABEL_STUDIO_USER_TOKEN": credentials["token"],
                # Images of tasks may be files under this folder (local-files storage).
                "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.home / "files"),
                # Annotators join by the invite link (GET /api/invite), not by an open sign-up page.
                "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
                # Nothing leaves this machine: no version check, no analytics.
                "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
                "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
                # Its webhooks must reach trainer.label's receiver on this machine's loopback, which the SSRF guard
                # forbids; the server itself listens on loopback only.
                "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
            },
            cwd=self.home,
        )  # fmt: skip

    async def probe(self) -> str | None:
        try:
            version = await get_json(f"{self.endpoint}/api/version")
        except (OSError, ValueError):
            return None
        return version.get("release") if isinstance(version, dict) else None

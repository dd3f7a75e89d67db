"""Label Studio of the local stack: on demand only, its own virtualenv, loopback only, the token deploy.local gave."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from deploy.local import ServiceStatus
from postlens.settings import Settings

pytestmark = pytest.mark.integration


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.local", *args], capture_output=True, text=True, timeout=600,
                          env=os.environ)  # fmt: skip


def test_a_plain_up_neither_starts_nor_lists_it(label_studio: ServiceStatus) -> None:
    assert "label-studio" not in json.loads(cli("status", "--json").stdout)
    assert "label-studio" not in cli("up").stdout


def test_up_only_label_studio_reports_its_version_from_its_own_venv(
    label_studio: ServiceStatus, settings: Settings
) -> None:
    status = json.loads(cli("status", "--only", "label-studio", "--json").stdout)["label-studio"]
    assert status["up"] and status["version"] == settings.label_studio_version
    assert (settings.home / "label-studio" / f"venv-{settings.label_studio_version}" / "bin" / "label-studio").is_file()


def test_it_listens_on_loopback_only_and_takes_the_token_it_was_given(
    label_studio: ServiceStatus, settings: Settings
) -> None:
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{settings.label_studio_port}"], capture_output=True,
                               text=True).stdout.split()  # fmt: skip
    assert f"127.0.0.1:{settings.label_studio_port}" in listening, listening
    assert f"0.0.0.0:{settings.label_studio_port}" not in listening
    url, token = settings.label_studio_endpoint()
    request = urllib.request.Request(f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["email"] == settings.label_studio_username

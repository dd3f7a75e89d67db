"""Settings: derived paths follow POSTLENS_HOME, the JDK follows JAVA_HOME, and exports tell the right Triton."""

from __future__ import annotations

from pathlib import Path

import pytest

from postlens.schemas import text_refusal
from postlens.settings import Settings


def test_retrained_checkpoints_live_under_postlens_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTLENS_HOME", str(tmp_path))
    assert Settings().checkpoints_dir == tmp_path / "checkpoints"
    monkeypatch.setenv("POSTLENS_CHECKPOINTS_DIR", str(tmp_path / "elsewhere"))
    assert Settings().checkpoints_dir == tmp_path / "elsewhere"


def test_the_jdk_is_the_one_java_home_names_unless_postlens_overrides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTLENS_JAVA_HOME", raising=False)
    monkeypatch.setenv("JAVA_HOME", "/opt/jdk-17")
    assert Settings().java_home == Path("/opt/jdk-17")
    monkeypatch.setenv("POSTLENS_JAVA_HOME", "/opt/jdk-21")
    assert Settings().java_home == Path("/opt/jdk-21")


def test_an_export_tells_the_local_triton_only_about_the_repository_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POSTLENS_TRITON_HTTP_URL", raising=False)
    settings = Settings(model_repository=tmp_path / "served", triton_http_port=8123)
    assert settings.triton_load_url(tmp_path / "served") == "http://localhost:8123"
    assert settings.triton_load_url(tmp_path / "scratch") is None
    remote = Settings(model_repository=tmp_path / "served", triton_http_url="http://triton.internal:8000/")
    assert remote.triton_load_url(tmp_path / "scratch") == "http://triton.internal:8000"


@pytest.mark.parametrize(
    ("text", "kind"), [("", "empty_text"), (" \n\t", "empty_text"), ("x" * 11, "oversize"), ("Jordan", None)]
)
def test_one_text_rule_for_every_door(text: str, kind: str | None) -> None:
    refusal = text_refusal(text, max_chars=10)
    assert (refusal[0] if refusal else None) == kind

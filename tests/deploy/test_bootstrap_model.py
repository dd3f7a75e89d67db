"""The first bring-up's seed archive (deploy/docker/bootstrap-model.sh, SEED_URL) is a checkpoint folder: files and
folders inside it. Anything else — a path leading out, a link, a device — refuses the whole archive, before any
version is exported, and leaves nothing behind, so the next attempt starts clean.

The script runs with this project's environment first on PATH (its Debian Python 3.11.2 has no tarfile filters, as
in the images); the archive is served over HTTP on loopback. The exported seed itself is tested from a
non-editable install (test_trainer_install) and through compose (test_compose_up).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.deploy.tools import DEPLOY
from tests.support.image_server import ImageServer

BOOTSTRAP = DEPLOY / "docker" / "bootstrap-model.sh"


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    data = b"" if kind != tarfile.REGTYPE else b"weights"
    info.size = len(data)
    return info, data


HOSTILE = {
    "a path out of the folder": [member("config.yaml"), member("../escaped")],
    "an absolute path": [member("/tmp/postlens-escaped-absolute")],
    "a symbolic link": [member("model.pt", tarfile.SYMTYPE, "/etc/passwd"), member("config.yaml")],
    "a hard link": [member("config.yaml"), member("model.pt", tarfile.LNKTYPE, "../escaped")],
    "a device": [member("config.yaml"), member("null", tarfile.CHRTYPE)],
    "a pipe": [member("config.yaml"), member("fifo", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_seed_archive_with_anything_but_files_and_folders_is_refused_whole(case: str, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "seed.tar.gz", "w:gz") as archive:
        for info, data in HOSTILE[case]:
            archive.addfile(info, io.BytesIO(data))
    checkpoints, models = tmp_path / "volume" / "checkpoints", tmp_path / "volume" / "models"
    with ImageServer(files_dir=served) as server:
        result = subprocess.run(
            ["sh", str(BOOTSTRAP)],
            env={
                **os.environ,
                "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                "SEED_CHECKPOINT": str(checkpoints / "seed"),
                "SEED_URL": server.url("files/seed.tar.gz"),
                "POSTLENS_MODEL_REPOSITORY": str(models),
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert "refusing" in result.stderr and "only files and folders" in result.stderr
    assert list(checkpoints.iterdir()) == [], "nothing unpacked stays: the next attempt starts clean"
    assert not models.exists(), "no version exported"
    assert not (tmp_path / "volume" / "escaped").exists() and not Path("/tmp/postlens-escaped-absolute").exists()

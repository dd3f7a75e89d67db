"""Cached, checksum-verified downloads from Maven Central, and the system packages the services need."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path
from xml.sax.saxutils import escape

from tqdm import tqdm

# Strongest first: the first digest published beside an artifact is the one we check.
CHECKSUM_ALGORITHMS = ("sha512", "sha256", "sha1")
_APT = threading.Lock()  # services prepare concurrently; dpkg takes one install at a time


class DownloadError(RuntimeError):
    pass


def maven_url(repo_url: str, group: str, artifact: str, version: str, ext: str) -> str:
    return f"{repo_url.rstrip('/')}/{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.{ext}"


def fetch_verified(url: str, dest: Path) -> Path:
    """Download ``url`` to ``dest`` (with a progress bar) unless already there, and check its published digest."""
    if dest.exists():
        return dest
    algorithm, expected = _published_digest(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.new(algorithm)
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
        size = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    if digest.hexdigest() != expected:
        partial.unlink()
        raise DownloadError(f"{algorithm} mismatch for {url}: got {digest.hexdigest()}, published {expected}")
    partial.rename(dest)
    return dest


def _published_digest(url: str) -> tuple[str, str]:
    for algorithm in CHECKSUM_ALGORITHMS:
        try:
            with urllib.request.urlopen(f"{url}.{algorithm}", timeout=30) as response:
                text = response.read().decode().strip()
        except OSError:
            continue
        if text:
            return algorithm, text.split()[0].lower()  # "<hex>" or "<hex>  <file name>"
    raise DownloadError(f"no checksum ({', '.join(CHECKSUM_ALGORITHMS)}) published beside {url}")


def fetch_maven_dependencies(
    coordinates: list[str], project_dir: Path, libs_dir: Path, local_repo: Path, repo_url: str
) -> Path:
    """Copy ``group:artifact:version`` jars and their runtime dependencies into ``libs_dir`` (once).

    Maven resolves the transitive closure and, with ``--strict-checksums``, rejects any file whose published
    checksum does not match.
    """
    done = libs_dir / ".complete"
    if done.exists():
        return libs_dir
    ensure_binaries({"mvn": "maven"})
    project_dir.mkdir(parents=True, exist_ok=True)
    (project_dir / "pom.xml").write_text(_pom(coordinates, repo_url))
    if libs_dir.exists():
        shutil.rmtree(libs_dir)  # an interrupted copy
    command = [
        "mvn", "-q", "-B", "--strict-checksums", f"-Dmaven.repo.local={local_repo}",
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={libs_dir}",
    ]  # fmt: skip
    print(f"fetching {', '.join(coordinates)} and dependencies from {repo_url} (maven)", flush=True)
    result = subprocess.run(command, cwd=project_dir, capture_output=True, text=True)
    if result.returncode != 0:
        raise DownloadError(f"maven failed ({' '.join(command)}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    done.touch()
    return libs_dir


def _pom(coordinates: list[str], repo_url: str) -> str:
    dependencies = "".join(
        f"<dependency><groupId>{escape(g)}</groupId><artifactId>{escape(a)}</artifactId>"
        f"<version>{escape(v)}</version></dependency>"
        for g, a, v in (c.split(":") for c in coordinates)
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>postlens.deploy</groupId><artifactId>service-libs</artifactId><version>0</version>
  <packaging>pom</packaging>
  <repositories><repository><id>central</id><url>{escape(repo_url)}</url></repository></repositories>
  <dependencies>{dependencies}</dependencies>
  <build><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId><artifactId>maven-dependency-plugin</artifactId><version>3.8.1</version>
  </plugin></plugins></build>
</project>
"""


def ensure_binaries(binary_to_package: dict[str, str]) -> None:
    """Install (Debian apt) the package of every binary missing from PATH."""
    missing = sorted({pkg for binary, pkg in binary_to_package.items() if shutil.which(binary) is None})
    if missing:
        apt_install(missing)


def apt_install(packages: list[str]) -> None:
    print(f"installing {' '.join(packages)} (apt-get)", flush=True)
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    wait_for_lock = ["-o", "DPkg::Lock::Timeout=300"]
    with _APT:
        for command in (
            ["apt-get", *wait_for_lock, "update", "-qq"],
            ["apt-get", *wait_for_lock, "install", "-y", "-qq", *packages],
        ):
            result = subprocess.run(command, capture_output=True, text=True, env=env)
            if result.returncode != 0:
                raise DownloadError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")

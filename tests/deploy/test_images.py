"""deploy/docker: what each image installs (read from its Dockerfile, resolved by uv from uv.lock), pinned bases,
unprivileged final stages, and build contexts that hold what the Dockerfiles copy.

Read, not built (the tests marked `images`, tests/deploy/test_*_image.py, run the images `make images` builds): the
install lines are replayed through `uv export`, which resolves exactly the packages `uv sync` would install from the
same lock with the same flags, for the images no engine builds here too (NVIDIA's base is out of reach).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from postlens.settings import get_settings
from tests.deploy.tools import DEPLOY, REPO, installed, output_of

DOCKERFILES = {path.name.removesuffix(".Dockerfile"): path for path in sorted((DEPLOY / "docker").glob("*.Dockerfile"))}
MAKEFILE_UV_VERSION = re.search(r"(?m)^UV_VERSION := (\S+)", (REPO / "Makefile").read_text())[1]
UV = get_settings().home / f"uv-{MAKEFILE_UV_VERSION}" / "bin" / "uv"
# torch, what needs it, and the CUDA wheels it pulls in (nvidia-cu*; not nvidia-pytriton, the serving extra's server).
TORCH = re.compile(r"^(torch|torchvision|open-clip-torch|triton|nvidia-cu[\w-]+)==", re.MULTILINE)
# What each image must install (extras of pyproject.toml) and whether torch may be among it.
EXPECTED = {
    "worker": ({"worker"}, False),
    "trainer": ({"trainer"}, True),
    "triton": ({"serving"}, False),
    "triton-cpu": ({"serving"}, False),
}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], words[0])
            stages.append(Stage(base, words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


def uv_sync_lines(stages: list[Stage]) -> list[list[str]]:
    """The flags of each `uv sync` (up to the next command of its RUN), without `--project` (the image's path)."""
    lines = []
    for stage in stages:
        for keyword, run in stage.instructions:
            if keyword == "RUN" and "uv sync" in run:
                flags = shlex.split(run[run.index("uv sync") :].split("&&")[0])[2:]
                if "--project" in flags:
                    del flags[flags.index("--project") : flags.index("--project") + 2]
                lines.append(flags)
    return lines


def ignore_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go's filepath.Match syntax, plus ** for any number of folders)."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            regex, i = regex + pattern[i : end + 1], end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex)


def dockerignore_excludes(relative: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [
        (line.startswith("!"), ignore_pattern(line.lstrip("!").strip("/")))
        for line in lines
        if line and not line.startswith("#")
    ]
    parts = Path(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, pattern in rules:
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_bases_are_pinned_and_uv_stays_out_of_the_final_image(image: str) -> None:
    _, stages = parse(DOCKERFILES[image])
    names = {stage.name for stage in stages if stage.name}
    for stage in stages:
        if stage.base in names:
            continue
        assert "@sha256:" in stage.base or re.search(r":[\w.-]+$", stage.base), f"unpinned base {stage.base}"
        assert not stage.base.endswith(":latest"), stage.base
    final = stages[-1]
    assert not any(keyword == "COPY" and "--from=uv" in rest for keyword, rest in final.instructions), (
        "uv in the final image"
    )
    # Either a build stage installs uv, or each step of the final stage that does removes it again.
    for keyword, rest in final.instructions:
        if keyword == "RUN" and "uv==" in rest:
            (venv,) = re.findall(r"python3? -m venv (\S+)", rest)
            assert re.search(rf"rm -rf {re.escape(venv)}(\s|$)", rest), f"uv left at {venv}: {rest}"


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_final_stage_runs_unprivileged(image: str) -> None:
    _, stages = parse(DOCKERFILES[image])
    users = [rest for keyword, rest in stages[-1].instructions if keyword == "USER"]
    assert users and users[-1] not in {"root", "0", "0:0"}


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_uv_is_the_version_make_setup_installs_and_comes_from_pypi(image: str) -> None:
    # An image registry may be out of reach where PyPI is not (this machine): uv is installed from PyPI.
    args, stages = parse(DOCKERFILES[image])
    assert args["UV_VERSION"] == MAKEFILE_UV_VERSION
    installs = [rest for stage in stages for keyword, rest in stage.instructions if keyword == "RUN" and "uv==" in rest]
    assert installs and all('"uv==${UV_VERSION}"' in rest for rest in installs)
    assert not [stage.base for stage in stages if "astral-sh/uv" in stage.base]


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_installs_its_extra_from_the_lock_and_torch_only_where_it_trains(image: str) -> None:
    extras, torch_expected = EXPECTED[image]
    lines = uv_sync_lines(parse(DOCKERFILES[image])[1])
    assert lines, "no uv sync line"
    for flags in lines:
        assert "--frozen" in flags, "installs must come from uv.lock as it is"
        assert {flags[i + 1] for i, flag in enumerate(flags) if flag == "--extra"} == extras
        # The packages `uv sync` with these flags installs, as uv resolves them from the lock.
        export_flags = [flag for flag in flags if flag not in {"--no-install-project", "--no-editable"}]
        packages = output_of(
            [installed(UV), "export", *export_flags, "--no-hashes", "--no-emit-project", "--offline", "--quiet"]
        )
        assert "pydantic-settings==" in packages  # the core is in every image
        found = TORCH.findall(packages)
        if torch_expected:
            assert "torch" in found, "the trainer image needs torch; the check would not see it otherwise"
        else:
            assert not found, f"{image} image would install {found}"


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_copied_sources_are_in_the_build_context(image: str) -> None:
    _, stages = parse(DOCKERFILES[image])
    sources = []
    for stage in stages:
        for keyword, rest in stage.instructions:
            if keyword == "COPY" and "--from=" not in rest:
                sources += shlex.split(rest)[:-1]
            sources += re.findall(r"--mount=type=bind,source=([^,\s]+)", rest)
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"{source} does not exist"
        assert not dockerignore_excludes(source.rstrip("/")), f"{source} is excluded by .dockerignore"
        # Whole folders too: some file inside must survive the ignore rules.
        if (REPO / source).is_dir():
            files = [p for p in (REPO / source).rglob("*.py")]
            assert any(not dockerignore_excludes(str(p.relative_to(REPO))) for p in files), source


def test_the_build_context_leaves_out_what_images_must_not_carry() -> None:
    for path in (
        ".venv/bin/python",
        "tests/conftest.py",
        "model_repository/postlens/1/network.onnx",
        "stream/__pycache__/app.cpython-311.pyc",
        "reports/model.md",
    ):
        assert dockerignore_excludes(path), path
    assert not dockerignore_excludes("model_repository/postlens/config.pbtxt")


def test_the_worker_image_carries_no_trainer_code() -> None:
    _, stages = parse(DOCKERFILES["worker"])
    copied = " ".join(rest for stage in stages for keyword, rest in stage.instructions if keyword == "COPY")
    assert "trainer" not in copied and "stream/" in copied


def final_user_uid(image: str) -> int:
    """The uid the final stage of ``image`` runs as (its USER, created by a useradd --uid in that stage)."""
    final = parse(DOCKERFILES[image])[1][-1]
    (user,) = [rest for keyword, rest in final.instructions if keyword == "USER"][-1:]
    uids = {
        words[-1]: int(words[words.index("--uid") + 1])
        for keyword, rest in final.instructions
        if keyword == "RUN"
        for command in re.split(r"&&|;", rest)
        if "useradd" in command and "--uid" in (words := shlex.split(command))
    }
    return int(user) if user.isdigit() else uids[user]


def final_env(image: str) -> dict[str, str]:
    final = parse(DOCKERFILES[image])[1][-1]
    env: dict[str, str] = {}
    for keyword, rest in final.instructions:
        if keyword == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(rest))
    return env


def created_directories(image: str) -> dict[str, str]:
    """Directories the final stage creates with `install -d -o OWNER`, and their owner."""
    final = parse(DOCKERFILES[image])[1][-1]
    created: dict[str, str] = {}
    for keyword, rest in final.instructions:
        for command in re.split(r"&&|;", rest) if keyword == "RUN" else []:
            words = shlex.split(command)
            if words[:2] == ["install", "-d"] and "-o" in words:
                owner = words[words.index("-o") + 1]
                created.update((path, owner) for path in words[2:] if path.startswith("/"))
    return created


def test_every_image_runs_as_the_same_unprivileged_uid() -> None:
    assert len({final_user_uid(image) for image in DOCKERFILES}) == 1


def test_onnxruntime_gpu_is_the_locked_version_hash_checked() -> None:
    lock = (REPO / "uv.lock").read_text()
    locked = re.search(r'(?m)^name = "onnxruntime"\nversion = "([^"]+)"', lock)[1]
    requirements = (DEPLOY / "docker" / "onnxruntime-gpu.txt").read_text()
    pins = re.findall(r"(?m)^([\w.-]+)==(\S+)", requirements)
    assert pins == [("onnxruntime-gpu", locked)]
    assert len(re.findall(r"--hash=sha256:[0-9a-f]{64}", requirements)) >= 1
    runs = " ".join(rest for stage in parse(DOCKERFILES["triton"])[1] for keyword, rest in stage.instructions)
    assert "--require-hashes -r /tmp/onnxruntime-gpu.txt" in runs and "--no-deps" in runs


# Where each Triton image's libpython3.11 is: the uv-managed CPython's on NVIDIA's image; on the default search path
# in the Python bases of the CPU image (python:3.11-slim's /usr/local/lib, Debian's libpython3.11 package).
LIBPYTHON_DIRS = {"triton": "/opt/python/current/lib", "triton-cpu": None}


@pytest.mark.parametrize("image", list(LIBPYTHON_DIRS))
def test_the_python_backend_stub_finds_every_library_it_needs(image: str) -> None:
    # The stub links the wheel's CUDA runtime through an RPATH relative to the wheel's folder; copied into Triton's
    # backends/python it has left that folder, so only the library path can lead to it.
    wheel = Path(__import__("pytriton").__file__).resolve().parent
    site_packages = wheel.parent
    stub = wheel / "tritonserver" / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", output_of(["readelf", "-d", stub]))
    assert needed
    library_path = final_env(image)["LD_LIBRARY_PATH"].split(":")
    venv_bin = next(entry for entry in final_env(image)["PATH"].split(":") if entry.endswith("venv/bin"))
    image_site_packages = f"{venv_bin.removesuffix('/bin')}/lib/python3.11/site-packages"
    for library in needed:
        if (site_packages / "nvidia_pytriton.libs" / library).exists():
            assert f"{image_site_packages}/nvidia_pytriton.libs" in library_path, library
        elif library.startswith("libpython"):
            assert LIBPYTHON_DIRS[image] is None or LIBPYTHON_DIRS[image] in library_path, library
        else:
            assert library.split(".so")[0] in {"libc", "libstdc++", "libgcc_s", "libm", "libdl", "libpthread"}, library

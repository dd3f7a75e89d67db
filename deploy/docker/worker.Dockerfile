# syntax=docker/dockerfile:1.7
# The stream worker: `python -m stream worker`. Installs the core and the `worker` extra from uv.lock — no torch.
# Build from the repository root:  docker build -f deploy/docker/worker.Dockerfile -t postlens-worker .
# Base tags are pinned; uv's version is the Makefile's UV_VERSION (tests/deploy/test_images.py checks both).
# PYTHON_IMAGE: where no registry is reachable, the Debian-built base (deploy/docker/base/).
# UV_CACHE_DIR: uv's cache during the build; deploy/images.sh mounts the host's uv cache there, so a build downloads
# nothing `make setup` already has.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG UV_VERSION=0.13.9

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 postlens \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/postlens --create-home postlens
# One stage: the venv is installed where it stays (copied from a build stage it would be written twice: 6.8 GB in
# the trainer image). uv (from PyPI, the Makefile's UV_VERSION) lives in /tmp/uv for each install step only (podman
# 4.3 cannot bind-mount a build stage it took from its cache); its settings are build arguments, not in the image.
ARG UV_VERSION
ARG UV_CACHE_DIR=/root/.cache/uv
ARG UV_PROJECT_ENVIRONMENT=/opt/venv
ARG UV_PYTHON_DOWNLOADS=never
ARG UV_COMPILE_BYTECODE=1
ARG UV_LINK_MODE=copy
# Dependencies first (a layer that changes only with pyproject.toml and the lock), then the project itself, not
# editable. The sources are copied (a bind mount would not invalidate podman's layer cache when they change) and
# removed once installed.
COPY pyproject.toml uv.lock /src/
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=cache,target=/root/.cache/pip \
    python -m venv /tmp/uv && /tmp/uv/bin/pip install -q "uv==${UV_VERSION}" \
 && /tmp/uv/bin/uv sync --project /src --frozen --no-default-groups --extra worker --no-install-project \
 && rm -rf /tmp/uv
COPY README.md /src/
COPY postlens/ /src/postlens/
COPY stream/ /src/stream/
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=cache,target=/root/.cache/pip \
    python -m venv /tmp/uv && /tmp/uv/bin/pip install -q "uv==${UV_VERSION}" \
 && /tmp/uv/bin/uv sync --project /src --frozen --no-default-groups --extra worker --no-editable \
 && rm -rf /tmp/uv /src
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 POSTLENS_HOME=/home/postlens/.cache/postlens
USER postlens
WORKDIR /home/postlens
# POSTLENS_WORKER_WEB_PORT (default 6066) serves /metrics; compose and the Helm chart probe and scrape it.
EXPOSE 6066
CMD ["python", "-m", "stream", "worker"]

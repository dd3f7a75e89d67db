# syntax=docker/dockerfile:1.7
# The stream worker: `python -m stream worker`. Installs the core and the `worker` extra from uv.lock — no torch.
# Build from the repository root:  docker build -f deploy/docker/worker.Dockerfile -t postlens-worker .
# Base tags are pinned; uv's version is the Makefile's UV_VERSION (tests/deploy/test_images.py checks both).
# PYTHON_IMAGE: where no registry is reachable, the Debian-built base (deploy/docker/base/).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG UV_VERSION=0.13.9

FROM ${PYTHON_IMAGE} AS build
# uv from PyPI, the version the Makefile's UV_VERSION installs (tests/deploy/test_images.py checks).
ARG UV_VERSION
RUN python -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}" \
 && ln -s /opt/uv/bin/uv /usr/local/bin/uv
ENV UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
WORKDIR /src
# Dependencies first (a layer that changes only with the lock), then the project itself, not editable.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=/src/pyproject.toml \
    --mount=type=bind,source=uv.lock,target=/src/uv.lock \
    uv sync --frozen --no-default-groups --extra worker --no-install-project
COPY pyproject.toml uv.lock README.md ./
COPY postlens/ postlens/
COPY stream/ stream/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-default-groups --extra worker --no-editable

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 postlens \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/postlens --create-home postlens
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 POSTLENS_HOME=/home/postlens/.cache/postlens
USER postlens
WORKDIR /home/postlens
# POSTLENS_WORKER_WEB_PORT (default 6066) serves /metrics; compose and the Helm chart probe and scrape it.
EXPOSE 6066
CMD ["python", "-m", "stream", "worker"]

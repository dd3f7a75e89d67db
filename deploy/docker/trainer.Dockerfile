# syntax=docker/dockerfile:1.7
# Training, export and periodic retraining (`python -m trainer.retrain`): the core and the `trainer` extra
# (torch, open_clip) from uv.lock. Build from the repository root:
#   docker build -f deploy/docker/trainer.Dockerfile -t postlens-trainer .
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
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=/src/pyproject.toml \
    --mount=type=bind,source=uv.lock,target=/src/uv.lock \
    uv sync --frozen --no-default-groups --extra trainer --no-install-project
COPY pyproject.toml uv.lock README.md ./
COPY postlens/ postlens/
COPY trainer/ trainer/
COPY model_repository/ model_repository/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-default-groups --extra trainer --no-editable

FROM ${PYTHON_IMAGE}
# uid 10001 in every image (and the chart's podUser): one owner of the model and checkpoint volumes. The mount points
# exist, owned by it, so a fresh named volume mounted there starts out writable (Docker and podman copy them up).
RUN groupadd --system --gid 10001 postlens \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/postlens --create-home postlens \
 && install -d -o postlens -g postlens /models /home/postlens/.cache /home/postlens/.cache/postlens \
      /home/postlens/.cache/postlens/checkpoints
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/bootstrap-model.sh /usr/local/bin/postlens-bootstrap-model
# /models: the model repository Triton serves, mounted read-write (new versions are exported into it).
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 POSTLENS_HOME=/home/postlens/.cache/postlens \
    POSTLENS_MODEL_REPOSITORY=/models
USER postlens
WORKDIR /home/postlens
CMD ["python", "-m", "trainer.retrain"]

# syntax=docker/dockerfile:1.7
# Training, export and periodic retraining (`python -m trainer.retrain`): the core and the `trainer` extra
# (torch, open_clip) from uv.lock. Build from the repository root:
#   docker build -f deploy/docker/trainer.Dockerfile -t postlens-trainer .
# PYTHON_IMAGE: where no registry is reachable, the Debian-built base (deploy/docker/base/).
# UV_CACHE_DIR: uv's cache during the build (deploy/images.sh mounts the host's there).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG UV_VERSION=0.13.9

FROM ${PYTHON_IMAGE}
# uid 10001 in every image (and the chart's podUser): one owner of the model and checkpoint volumes. The mount points
# exist, owned by it, so a fresh named volume mounted there starts out writable (Docker and podman copy them up).
RUN groupadd --system --gid 10001 postlens \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/postlens --create-home postlens \
 && install -d -o postlens -g postlens /models /home/postlens/.cache /home/postlens/.cache/postlens \
      /home/postlens/.cache/postlens/checkpoints
# As in the worker image: the venv (6.8 GB with torch's CUDA wheels) installed where it stays, uv only during the
# install steps, the sources copied and removed once installed.
ARG UV_VERSION
ARG UV_CACHE_DIR=/root/.cache/uv
ARG UV_PROJECT_ENVIRONMENT=/opt/venv
ARG UV_PYTHON_DOWNLOADS=never
ARG UV_COMPILE_BYTECODE=1
ARG UV_LINK_MODE=copy
COPY pyproject.toml uv.lock /src/
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=cache,target=/root/.cache/pip \
    python -m venv /tmp/uv && /tmp/uv/bin/pip install -q "uv==${UV_VERSION}" \
 && /tmp/uv/bin/uv sync --project /src --frozen --no-default-groups --extra trainer --no-install-project \
 && rm -rf /tmp/uv
COPY README.md /src/
COPY postlens/ /src/postlens/
COPY trainer/ /src/trainer/
COPY model_repository/ /src/model_repository/
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=cache,target=/root/.cache/pip \
    python -m venv /tmp/uv && /tmp/uv/bin/pip install -q "uv==${UV_VERSION}" \
 && /tmp/uv/bin/uv sync --project /src --frozen --no-default-groups --extra trainer --no-editable \
 && rm -rf /tmp/uv /src
COPY deploy/docker/bootstrap-model.sh /usr/local/bin/postlens-bootstrap-model
# /models: the model repository Triton serves, mounted read-write (new versions are exported into it).
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 POSTLENS_HOME=/home/postlens/.cache/postlens \
    POSTLENS_MODEL_REPOSITORY=/models
USER postlens
WORKDIR /home/postlens
CMD ["python", "-m", "trainer.retrain"]

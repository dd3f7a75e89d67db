# syntax=docker/dockerfile:1.7
# Triton Inference Server on CPU without NVIDIA's image: the server the locked nvidia-pytriton wheel ships (Triton
# 2.51, the one the local stack and the tests run), on the project's Python base, serving model_repository/ (mounted
# at /models) with the `serving` extra from uv.lock. The GPU build is triton.Dockerfile (NVIDIA's image, ONNX
# Runtime's GPU build); this one runs where that base cannot be pulled, and in the tests (`make images`).
# Build from the repository root:  docker build -f deploy/docker/triton-cpu.Dockerfile -t postlens-triton-cpu .
# PYTHON_IMAGE: where no registry is reachable, the Debian-built base (deploy/docker/base/).
# UV_CACHE_DIR: uv's cache during the build (deploy/images.sh mounts the host's there).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG UV_VERSION=0.13.9

FROM ${PYTHON_IMAGE}
# uid 10001 in every image (and the chart's podUser): the owner of the model volume the trainer writes.
RUN groupadd --system --gid 10001 postlens \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/postlens --create-home postlens \
 && install -d -o postlens -g postlens /models
# As in the worker image: the venv installed where it stays, uv only during the install steps, the sources copied
# and removed once installed.
ARG UV_VERSION
ARG UV_CACHE_DIR=/root/.cache/uv
ARG UV_PROJECT_ENVIRONMENT=/opt/venv
ARG UV_PYTHON_DOWNLOADS=never
ARG UV_COMPILE_BYTECODE=1
ARG UV_LINK_MODE=copy
COPY pyproject.toml uv.lock /src/
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=cache,target=/root/.cache/pip \
    python -m venv /tmp/uv && /tmp/uv/bin/pip install -q "uv==${UV_VERSION}" \
 && /tmp/uv/bin/uv sync --project /src --frozen --no-default-groups --extra serving --no-install-project \
 && rm -rf /tmp/uv
COPY README.md /src/
COPY postlens/ /src/postlens/
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=cache,target=/root/.cache/pip \
    python -m venv /tmp/uv && /tmp/uv/bin/pip install -q "uv==${UV_VERSION}" \
 && /tmp/uv/bin/uv sync --project /src --frozen --no-default-groups --extra serving --no-editable \
 && rm -rf /tmp/uv /src
# The wheel's server at the path Triton's own image uses (its default backend directory), and the Python-backend
# stub for 3.11 beside the backend, where Triton looks for it (the wheel keeps stubs per Python version apart).
ARG SERVER=/opt/venv/lib/python3.11/site-packages/pytriton/tritonserver
RUN cp "$SERVER/python_backend_stubs/3.11/triton_python_backend_stub" "$SERVER/backends/python/" \
 && ln -s "$SERVER" /opt/tritonserver
# The stub embeds Debian's libpython3.11 (in the base) and runs model.py with the first python3 on PATH: the
# project's venv. The server and the stub find their CUDA runtime through an RPATH relative to the wheel's folder,
# which the stub left: the wheel's libraries go on the library path, as deploy/services/triton.py does.
ENV PATH=/opt/tritonserver/bin:/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia_pytriton.libs
USER postlens
EXPOSE 8000 8001 8002
# As triton.Dockerfile: poll mode, every replica loads a new newest version of the shared repository by itself.
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=poll", "--repository-poll-secs=15", \
     "--exit-on-error=false", "--strict-readiness=false", "--log-verbose=0"]

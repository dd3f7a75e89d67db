# syntax=docker/dockerfile:1.7
# Triton Inference Server on NVIDIA's official image, serving model_repository/ (mounted at /models) with the
# project's Python 3.11, the `serving` extra from uv.lock and ONNX Runtime's GPU build.
# Build from the repository root:  docker build -f deploy/docker/triton.Dockerfile -t postlens-triton .
#
# 24.10 ships Triton 2.51.0, the server inside the locked nvidia-pytriton wheel that the tests run against. Its own
# Python is 3.10 while PostLens needs 3.11, so the image gets a relocatable CPython 3.11 (uv-managed) and the
# Python-backend stub built for 3.11, which that same wheel ships for the same Triton version.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM ${TRITON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_INSTALL_DIR=/opt/python UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN uv python install 3.11 \
 && ln -s "$(dirname "$(dirname "$(uv python find 3.11)")")" /opt/python/current
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    uv sync --frozen --no-default-groups --extra serving --no-install-project
COPY pyproject.toml uv.lock README.md ./
COPY postlens/ postlens/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-default-groups --extra serving --no-editable
# The same ONNX Runtime version, GPU build (CUDA 12 + cuDNN 9, both in the base image); the CPU build would shadow it.
RUN --mount=type=cache,target=/root/.cache/uv \
    version="$(/opt/venv/bin/python -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')" \
 && uv pip uninstall --python /opt/venv/bin/python onnxruntime \
 && uv pip install --python /opt/venv/bin/python "onnxruntime-gpu==${version}"
RUN cp /opt/venv/lib/python3.11/site-packages/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub \
       /opt/triton_python_backend_stub

FROM ${TRITON_IMAGE}
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/triton_python_backend_stub /opt/tritonserver/backends/python/triton_python_backend_stub
# The committed model configs and code; the Helm chart seeds an empty model volume with them.
COPY model_repository/ /opt/postlens/model_repository/
# The stub embeds the libpython it finds and runs model.py with the first python3 on PATH: the project's venv.
ENV PATH=/opt/venv/bin:$PATH LD_LIBRARY_PATH=/opt/python/current/lib:$LD_LIBRARY_PATH PYTHONUNBUFFERED=1
# triton-server (uid 1000) is the base image's unprivileged user.
USER triton-server
EXPOSE 8000 8001 8002
# Explicit model control with every model loaded at start: trainer.retrain loads new versions with no restart.
# Readiness is per model (/v2/models/postlens/ready), so one broken model does not stop the server.
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=explicit", "--load-model=*", \
     "--exit-on-error=false", "--strict-readiness=false", "--log-verbose=0"]

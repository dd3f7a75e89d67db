# syntax=docker/dockerfile:1.7
# Triton Inference Server on NVIDIA's official image, serving model_repository/ (mounted at /models) with the
# project's Python 3.11, the `serving` extra from uv.lock and ONNX Runtime's GPU build.
# Build from the repository root:  docker build -f deploy/docker/triton.Dockerfile -t postlens-triton .
#
# 24.10 ships Triton 2.51.0, the server inside the locked nvidia-pytriton wheel that the tests run against. Its own
# Python is 3.10 while PostLens needs 3.11, so the image gets a relocatable CPython 3.11 (uv-managed) and the
# Python-backend stub built for 3.11, which that same wheel ships for the same Triton version.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
ARG UV_VERSION=0.13.9

FROM ${TRITON_IMAGE} AS build
# uv from PyPI, the version the Makefile's UV_VERSION installs (tests/deploy/test_images.py checks).
ARG UV_VERSION
RUN python3 -m pip install --no-cache-dir --target /opt/uv "uv==${UV_VERSION}" && ln -s /opt/uv/bin/uv /usr/local/bin/uv
ENV UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_INSTALL_DIR=/opt/python UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN uv python install 3.11 \
 && ln -s "$(dirname "$(dirname "$(uv python find 3.11)")")" /opt/python/current
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=/src/pyproject.toml \
    --mount=type=bind,source=uv.lock,target=/src/uv.lock \
    uv sync --frozen --no-default-groups --extra serving --no-install-project
COPY pyproject.toml uv.lock README.md ./
COPY postlens/ postlens/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-default-groups --extra serving --no-editable
# The same ONNX Runtime version, GPU build (CUDA 12 + cuDNN 9, both in the base image), hash-checked; its
# dependencies are the CPU build's, already installed from the lock. The CPU build would shadow it.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=deploy/docker/onnxruntime-gpu.txt,target=/tmp/onnxruntime-gpu.txt \
    uv pip uninstall --python /opt/venv/bin/python onnxruntime \
 && uv pip install --python /opt/venv/bin/python --no-deps --require-hashes -r /tmp/onnxruntime-gpu.txt
RUN cp /opt/venv/lib/python3.11/site-packages/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub \
       /opt/triton_python_backend_stub

FROM ${TRITON_IMAGE}
# uid 10001 in every image (and the chart's podUser): the owner of the model volume the trainer writes.
RUN groupadd --system --gid 10001 postlens \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/postlens --create-home postlens \
 && install -d -o postlens -g postlens /models
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/triton_python_backend_stub /opt/tritonserver/backends/python/triton_python_backend_stub
# The stub embeds the libpython it finds and runs model.py with the first python3 on PATH: the project's venv. It
# finds its CUDA runtime (libcudart) through an RPATH relative to the wheel's folder, which it left: the wheel's
# libraries go on the library path, as deploy/services/triton.py does for the local stack.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    LD_LIBRARY_PATH=/opt/python/current/lib:/opt/venv/lib/python3.11/site-packages/nvidia_pytriton.libs:$LD_LIBRARY_PATH
USER postlens
EXPOSE 8000 8001 8002
# Poll mode: every replica loads a new newest version from the shared repository by itself, so replicas converge
# (deploy/README.md, model rollout). Readiness is per model (/v2/models/postlens/ready). The GPU config variant:
# add --model-config-name=gpu (compose's gpu profile, the chart with triton.gpus > 0).
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=poll", "--repository-poll-secs=15", \
     "--exit-on-error=false", "--strict-readiness=false", "--log-verbose=0"]

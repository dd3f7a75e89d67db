"""Triton from the nvidia-pytriton wheel: a second server on a temporary repository, through tritonclient.grpc.aio."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from deploy.local import triton_command
from deploy.process import free_port, spawn, stop, tail
from tests.support.triton_stats import counts_once_recorded

pytestmark = pytest.mark.integration

MODEL = "add_one"
CONFIG = textwrap.dedent(
    f"""
    name: "{MODEL}"
    backend: "python"
    max_batch_size: 8
    input [{{ name: "X", data_type: TYPE_FP32, dims: [4] }}]
    output [{{ name: "Y", data_type: TYPE_FP32, dims: [4] }}]
    dynamic_batching {{ max_queue_delay_microseconds: 20000 }}
    instance_group [{{ kind: KIND_CPU, count: 1 }}]
    """
)
MODEL_PY = textwrap.dedent(
    """
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 1)]))
            return responses
    """
)


@pytest.fixture
async def second_triton(tmp_path: Path) -> AsyncIterator[str]:
    """A tritonserver serving a one-model temporary repository on free ports; its gRPC address."""
    (tmp_path / "repo" / MODEL / "1").mkdir(parents=True)
    (tmp_path / "repo" / MODEL / "config.pbtxt").write_text(CONFIG)
    (tmp_path / "repo" / MODEL / "1" / "model.py").write_text(MODEL_PY)
    grpc_port = free_port()
    spec = triton_command(tmp_path / "repo", grpc_port=grpc_port, http_port=free_port(), metrics_port=free_port())
    log = tmp_path / "triton.log"
    pid = spawn(spec, log)
    url = f"localhost:{grpc_port}"
    client = grpcclient.InferenceServerClient(url)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if await client.is_model_ready(MODEL):
                    break
            except InferenceServerException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"second tritonserver did not load {MODEL}; {log}:\n{tail(log)}", pytrace=False)
            await asyncio.sleep(0.5)
        yield url
    finally:
        await client.close()
        stop(pid)


async def test_concurrent_requests_are_dynamically_batched(second_triton: str) -> None:
    client = grpcclient.InferenceServerClient(second_triton)
    rows = [np.full((1, 4), i, dtype=np.float32) for i in range(40)]

    async def infer(row: np.ndarray) -> np.ndarray:
        tensor = grpcclient.InferInput("X", list(row.shape), "FP32")
        tensor.set_data_from_numpy(row)
        result = await client.infer(MODEL, [tensor], outputs=[grpcclient.InferRequestedOutput("Y")])
        return result.as_numpy("Y")

    try:
        outputs = await asyncio.gather(*(infer(row) for row in rows))
        inferences, executions = await counts_once_recorded(client, MODEL, len(rows))
    finally:
        await client.close()

    for row, output in zip(rows, outputs, strict=True):
        np.testing.assert_array_equal(output, row + 1)
    assert inferences == len(rows)
    assert executions < inferences, f"{inferences} requests took {executions} executions"

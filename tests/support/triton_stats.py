"""Triton's inference statistics of a model, read once they have caught up: Triton records an execution's
statistics after its responses are sent, so a client can hold every answer before the counts include them."""

from __future__ import annotations

import asyncio
import time

import tritonclient.grpc.aio as grpc_aio


async def counts(client: grpc_aio.InferenceServerClient, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of ``model``, over its versions."""
    statistics = await client.get_inference_statistics(model, as_json=True)
    models = statistics["model_stats"]
    return (
        sum(int(entry.get("inference_count", 0)) for entry in models),
        sum(int(entry.get("execution_count", 0)) for entry in models),
    )


async def counts_once_recorded(
    client: grpc_aio.InferenceServerClient, model: str, inferences: int, timeout_s: float = 10.0
) -> tuple[int, int]:
    """:func:`counts` once at least ``inferences`` are recorded (or ``timeout_s`` passed: the caller's assertion
    then shows what was)."""
    deadline = time.monotonic() + timeout_s
    while (recorded := await counts(client, model))[0] < inferences and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return recorded

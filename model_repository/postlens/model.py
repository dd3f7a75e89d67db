"""Triton Python-backend code of the entry model ``postlens`` (its tensors: docs/contracts.md).

``trainer.export`` copies this one file into every version folder (the Python backend loads ``N/model.py``); the
version's weights, tokenizer and config sit beside it. Per request (Triton adds the batch dimension):
``TEXT`` BYTES [1], ``IMAGES`` UINT8 [4, S, S, 3], ``IMAGE_MASK`` BOOL [4] → ``RESULT`` BYTES [1], the JSON of a
:class:`postlens.schemas.PostPrediction` naming this model and version.

Triton's dynamic batcher hands :meth:`TritonPythonModel.execute` the requests that arrived together. The valid
ones run as one batch through preprocessing, the ONNX network (ONNX Runtime) and the NumPy CRF decoder; an invalid
one gets its own INVALID_ARG error and the others are unaffected.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from postlens.runtime.cores import usable_cores
from postlens.runtime.exported import ExportedModel, execution_providers, version_precision
from postlens.schemas import ModelRef, text_refusal
from postlens.settings import get_settings


class InvalidInput(ValueError):
    """The request, not the model, is at fault."""


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        started = time.perf_counter()
        model_config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}
        provider = parameters.get("execution_provider", "auto")
        if provider == "auto":
            provider = "cuda" if args["model_instance_kind"] == "GPU" else "cpu"
        version_dir = Path(args["model_repository"]) / args["model_version"]
        precision = parameters.get("precision", "fp32")
        if precision != "fp16":  # a GPU's TensorRT precision is the config's; on CPU, the version's own
            precision = version_precision(version_dir, precision)
        # The instances share the cores the container may use; more threads than that would only be throttled.
        instances = sum(int(group.get("count", 1)) for group in model_config.get("instance_group", [])) or 1
        threads = int(parameters.get("intra_op_threads", "0")) or max(1, usable_cores() // instances)
        self.model = ExportedModel.load(
            version_dir,
            ModelRef(name=args["model_name"], version=args["model_version"]),
            execution_providers(
                provider, int(args["model_instance_device_id"]), fp16=precision == "fp16", cache_dir=version_dir
            ),
            threads,
            precision,
            parameters.get("length_batching", "true") == "true",
        )
        self.max_text_chars = get_settings().max_text_chars
        pb_utils.Logger.log_info(
            f"{args['model_instance_name']}: version {args['model_version']} at {precision} on {self.model.engine}, "
            f"{threads} threads, {self.model.image_size}px images, ready in {time.perf_counter() - started:.1f}s"
        )

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        accepted: dict[int, tuple[list[str], np.ndarray, np.ndarray]] = {}
        for index, request in enumerate(requests):
            try:
                accepted[index] = self._read(request)
            except InvalidInput as error:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)
                )
        if accepted:
            texts = [text for texts, _, _ in accepted.values() for text in texts]
            images = np.concatenate([images for _, images, _ in accepted.values()])
            masks = np.concatenate([mask for _, _, mask in accepted.values()])
            documents = iter(prediction.model_dump_json() for prediction in self.model.predict(texts, images, masks))
            for index, (request_texts, _, _) in accepted.items():
                result = np.array([[next(documents).encode("utf-8")] for _ in request_texts], dtype=np.object_)
                responses[index] = pb_utils.InferenceResponse([pb_utils.Tensor("RESULT", result)])
        return responses

    def _read(self, request) -> tuple[list[str], np.ndarray, np.ndarray]:
        """One request's posts (usually one; a client may send several rows): texts, images [b, 4, S, S, 3], masks."""
        raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
        images = pb_utils.get_input_tensor_by_name(request, "IMAGES").as_numpy()
        masks = pb_utils.get_input_tensor_by_name(request, "IMAGE_MASK").as_numpy().astype(bool)
        texts = []
        for value in raw:
            try:
                text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError as error:
                raise InvalidInput(f"TEXT is not valid UTF-8: {error}") from None
            if refusal := text_refusal(text, self.max_text_chars):
                raise InvalidInput(refusal[1])
            texts.append(text)
        return texts, images, masks

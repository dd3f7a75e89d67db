"""A Python-backend model that fails its whole execution (every request batched with it: INTERNAL) when one text
contains POISON, and answers text containing GARBLE with something that is not a prediction."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests: list) -> list:
        texts = [pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy().reshape(-1)[0].decode() for r in requests]
        if any("POISON" in text for text in texts):
            raise RuntimeError("the model crashed on a poison post")
        responses = []
        for text in texts:
            answer = "not json" if "GARBLE" in text else json.dumps({"model": {"name": "postlens", "version": "1"}})
            result = np.array([[answer.encode()]], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("RESULT", result)]))
        return responses

"""A Python-backend model that fails its whole execution (every request batched with it: INTERNAL) when one text
contains POISON, answers text containing GARBLE with something that is not a prediction, and text containing
REGION with an entity grounded in an image the post does not have. SLOW takes 2.5 s. BREAK makes every execution
fail from then on (a version that is ready but fails every request) until a text says HEAL."""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    broken = False

    def execute(self, requests: list) -> list:
        texts = [pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy().reshape(-1)[0].decode() for r in requests]
        if any("HEAL" in text for text in texts):
            self.broken = False
        elif any("BREAK" in text for text in texts):
            self.broken = True
        if self.broken:
            raise RuntimeError("this model version fails every request")
        if any("SLOW" in text for text in texts):
            time.sleep(2.5)
        if any("POISON" in text for text in texts):
            raise RuntimeError("the model crashed on a poison post")
        responses = []
        for text in texts:
            answer = "not json" if "GARBLE" in text else json.dumps(_prediction(text))
            result = np.array([[answer.encode()]], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("RESULT", result)]))
        return responses


def _prediction(text: str) -> dict:
    entities = []
    if "REGION" in text:
        start = text.index("REGION")
        region = {"image_index": 3, "box": [0, 0, 1, 1], "score": 0.5}
        entities.append(
            {"text": "REGION", "type": "PER", "start": start, "end": start + 6, "confidence": 0.9, "regions": [region]}
        )
    return {"entities": entities, "model": {"name": "postlens", "version": "1"}}

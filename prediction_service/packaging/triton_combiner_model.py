"""Triton python-backend step of a generated ensemble: the ``weighted_price_sentiment`` combiner.

Copied verbatim as ``<entry>/<version>/model.py`` by the project (never user code); it imports only numpy
and Triton's ``triton_python_backend_utils``, never this package, so the formula is written out again
here: prediction_service/ensemble/combiners.py documents it, and tests/ensemble/test_triton_ensemble.py
holds the two equal through a real tritonserver. Its parameters come from config.pbtxt (``combiner``:
the ensemble's combiner as JSON; ``positive_index`` / ``negative_index``: where those scores sit).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

OUTPUTS = ("prediction", "confidence", "price", "sentiment_score")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        combiner = json.loads(parameters["combiner"])
        if combiner.get("kind") != "weighted_price_sentiment" or combiner.get("step_version") != 1:
            raise ValueError(f"unsupported combiner {combiner.get('kind')} v{combiner.get('step_version')}")
        self.c = combiner
        self.positive = int(parameters["positive_index"])
        self.negative = int(parameters["negative_index"])

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        c = self.c
        price = pb_utils.get_input_tensor_by_name(request, "price").as_numpy().astype(np.float64).reshape(-1)
        scores = pb_utils.get_input_tensor_by_name(request, "probabilities").as_numpy().astype(np.float64)
        s = scores[:, self.positive] - scores[:, self.negative]
        adjusted = c["baseline"] * (1.0 + c["sentiment_scale"] * s)
        prediction = c["price_weight"] * price + c["sentiment_weight"] * adjusted
        agree = (s == 0.0) | (np.sign(s) == np.sign(price - c["baseline"]))
        confidence = scores.max(axis=1) * np.where(agree, c["agree_confidence"], c["disagree_confidence"])
        values = dict(zip(OUTPUTS, (prediction, confidence, price, s)))
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, values[name].reshape(-1, 1)) for name in OUTPUTS])

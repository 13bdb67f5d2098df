"""Triton Python-backend model that costs nothing: it answers every request at once with constants of the
shapes its config declares, whatever the input. For benchmarks only (bench/free.py).

With the model made free, what limits throughput is the caller's path (the router, or a direct client)
rather than the model: on a GPU a short text costs the model tens of microseconds, which this stands in
for on a CPU testbed. The config, tokenizer and tensors stay the served model's, so the router cannot tell
the difference except by the numbers that come back: each output is one fixed row repeated over the
batch (a unit vector for an embedding, a fixed score for a reranker).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

_NUMPY_TYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.first_input = config["input"][0]["name"]
        self.rows = {}
        for output in config["output"]:
            dims = [int(d) for d in output["dims"]]
            width = int(np.prod(dims)) if dims else 1
            row = np.linspace(1.0, 2.0, width).astype(_NUMPY_TYPES[output["data_type"]])
            self.rows[output["name"]] = row.reshape(dims) / np.linalg.norm(row)

    def execute(self, requests):
        responses = []
        for request in requests:
            batch = pb_utils.get_input_tensor_by_name(request, self.first_input).as_numpy().shape[0]
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(np.broadcast_to(row, (batch, *row.shape))))
                for name, row in self.rows.items()
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

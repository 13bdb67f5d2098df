"""Triton Python-backend model that runs an ONNX graph with onnxruntime on the CPU.

The tritonserver shipped by nvidia-pytriton has no onnxruntime backend, so on a CPU machine this file
serves `model.onnx`. On a GPU Triton the same `model.onnx` is served with `backend: "onnxruntime"` (or a
TensorRT plan built from it): the tensor names and shapes in `config.pbtxt` stay the same, so the router
cannot tell the difference.

Model-config parameters read here:
  onnx_file             file name inside the version folder (default model.onnx)
  onnx_intra_op_threads onnxruntime intra-op threads (default 0: onnxruntime decides)
  test_delay_per_batch_s for tests and benchmarks only: sleep this long in each execute (a slowed shard)
"""

import json
import os
import time

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("onnx_intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        # Spinning threads burn a core between requests; on a shared CPU that is pure loss.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        graph_inputs = {node.name for node in self.session.get_inputs()}
        self.input_names = [tensor["name"] for tensor in config["input"] if tensor["name"] in graph_inputs]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.delay_s = float(params.get("test_delay_per_batch_s", "0"))

    def execute(self, requests):
        if self.delay_s:
            time.sleep(self.delay_s)
        # Triton's dynamic batcher may hand over several requests; those whose tensors share a shape
        # (beyond the batch axis) run as one onnxruntime call, the others run on their own.
        feeds = [self._feeds(request) for request in requests]
        groups = {}
        for index, feed in enumerate(feeds):
            key = tuple(feed[name].shape[1:] for name in self.input_names)
            groups.setdefault(key, []).append(index)

        responses = [None] * len(requests)
        for members in groups.values():
            merged = {name: np.concatenate([feeds[i][name] for i in members]) for name in self.input_names}
            try:
                outputs = self.session.run(self.output_names, merged)
            except Exception as error:  # onnxruntime raises its own types; hand any of them back
                for i in members:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error)))
                continue
            start = 0
            for i in members:
                rows = len(feeds[i][self.input_names[0]])
                tensors = [
                    pb_utils.Tensor(name, output[start : start + rows])
                    for name, output in zip(self.output_names, outputs, strict=True)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += rows
        return responses

    def _feeds(self, request):
        return {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}

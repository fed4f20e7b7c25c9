"""Triton Python-backend model running ``<version>/model.onnx`` with onnxruntime on CPU.

Stands in for Triton's onnxruntime backend, which the tritonserver of the
nvidia-pytriton wheel lacks: ``hevlayer-triton-repository --cpu`` installs it
as the ``model.py`` of every ``backend: "onnxruntime"`` model, so the GPU
repository of ``deploy/triton`` (ensemble, tokenizer, pooling, names, shapes)
runs for real on a CPU-only machine. Inputs and outputs are fed and returned
by the names in config.pbtxt; each request runs on its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from hevlayer.triton.server_watch import exit_with_server


class TritonPythonModel:
    """The Python backend's model class."""

    def initialize(self, args: dict[str, str]) -> None:
        exit_with_server()  # the stub must not outlive a killed server
        config = json.loads(args["model_config"])
        self.inputs: list[str] = [i["name"] for i in config["input"]]
        self.outputs: list[str] = [o["name"] for o in config["output"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            feeds = {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs
            }
            results = self.session.run(self.outputs, feeds)
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(value))
                for name, value in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

"""Triton Python-backend model: text in, normalized embeddings out (the local server's model).

:mod:`hevlayer.triton.local` copies this file to
``<repository>/<model>/1/model.py``; it runs inside Triton's Python backend
stub, never in the embedder. Tokenization, the ONNX encoder (onnxruntime on
CPU), mean pooling and L2 normalization all happen in one model: on a CPU,
one stub hop per batch is the lean path (an ensemble would copy every
intermediate tensor through shared memory three times).

Inputs and outputs (named in config.pbtxt, the same as the GPU ensemble in
``deploy/triton``): ``TEXT`` (BYTES, ``[-1, 1]``, UTF-8), ``EMBEDDING``
(FP32, ``[-1, dimension]``). The ``parameters`` of config.pbtxt say where the
model files are and how onnxruntime runs (see :mod:`hevlayer.triton.local`). Every
request of a dynamic batch is embedded in one call, sorted by length.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from hevlayer.triton.onnx_model import ModelFiles, OnnxEmbedder, RuntimeOptions
from hevlayer.triton.server_watch import exit_with_server


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    raw: dict[str, dict[str, str]] = config.get("parameters", {})
    return {key: value["string_value"] for key, value in raw.items()}


class TritonPythonModel:
    """The Python backend's model class (one instance per model instance)."""

    def initialize(self, args: dict[str, str]) -> None:
        exit_with_server()  # the stub must not outlive a killed server
        config = json.loads(args["model_config"])
        params = _parameters(config)
        self.input_name: str = config["input"][0]["name"]
        self.output_name: str = config["output"][0]["name"]
        files = ModelFiles(
            onnx_path=Path(params["onnx_path"]),
            tokenizer_path=Path(params["tokenizer_path"]),
            dimension=int(params["dimension"]),
            max_length=int(params.get("max_length", "256")),
            onnx_sha256=params.get("onnx_sha256") or None,
            tokenizer_sha256=params.get("tokenizer_sha256") or None,
        )
        options = RuntimeOptions(
            intra_op_threads=int(params.get("intra_op_threads", "0")),
            allow_spinning=params.get("allow_spinning", "false").lower() == "true",
            max_batch_tokens=int(params.get("max_batch_tokens", str(RuntimeOptions.max_batch_tokens))),
            parallel_runs=int(params.get("parallel_runs", "0")),
            fuse_graph=params.get("fuse_graph", "true").lower() == "true",
        )
        self.embedder = OnnxEmbedder(files, options)
        fusion = self.embedder.fusion
        pb_utils.Logger.log_info(
            f"hevlayer: encoder {files.onnx_path.name}: "
            + (
                f"{fusion.attention} of {fusion.layers} attention layers and {fusion.gelu} GELUs fused"
                if fusion is not None
                else "graph as the file has it (fuse_graph false)"
            )
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        texts: list[str] = []
        counts: list[int] = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            items = [
                item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
                for item in tensor.reshape(-1)
            ]
            texts.extend(items)
            counts.append(len(items))
        vectors = self.embedder.embed(texts)
        responses = []
        start = 0
        for count in counts:
            out = np.ascontiguousarray(vectors[start : start + count])
            start += count
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, out)])
            )
        return responses

    def finalize(self) -> None:
        self.embedder = None  # type: ignore[assignment]

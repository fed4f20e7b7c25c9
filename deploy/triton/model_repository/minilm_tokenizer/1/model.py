"""Triton Python-backend tokenizer: TEXT (BYTES) -> input_ids, attention_mask, token_type_ids (INT64).

Self-contained (numpy and `tokenizers` only): it runs in Triton's image, not
in hevlayer's. Reads tokenizer.json from its version directory; the
``max_length`` and ``pad_to_multiple_of`` parameters come from config.pbtxt.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / "tokenizer.json"
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(max_length=int(params.get("max_length", "256")))
        multiple = int(params.get("pad_to_multiple_of", "0")) or None
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", pad_to_multiple_of=multiple)

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            decoded = [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t) for t in texts]
            encodings = self.tokenizer.encode_batch(decoded)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("input_ids", ids),
                        pb_utils.Tensor("attention_mask", mask),
                        pb_utils.Tensor("token_type_ids", np.zeros_like(ids)),
                    ]
                )
            )
        return responses

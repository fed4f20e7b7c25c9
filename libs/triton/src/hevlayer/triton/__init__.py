"""The local Triton server and the Triton model repositories (development, tests, image builds).

Nothing here runs in a deployable: the embedder only calls Triton (its client is
``hevlayer.embedder.triton_client``).

- :mod:`hevlayer.triton.local`: ``LocalTriton``, one real ``tritonserver`` (the nvidia-pytriton
  wheel's, Python backend, CPU) serving the embedding model on loopback; ``hevlayer-triton-local``.
- :mod:`hevlayer.triton.python_model`: that server's model (tokenize, encode, pool, normalize),
  copied into the model repository it writes.
- :mod:`hevlayer.triton.onnx_model`: the embedding model in-process (tokenizer, onnxruntime,
  pooling), what ``python_model`` runs; :mod:`hevlayer.triton.model_files` says where its files
  are and how it runs (data only, no onnxruntime); :mod:`hevlayer.triton.graph_fusion` rewrites
  the encoder's attention and GELU into onnxruntime's fused kernels at load.
- :mod:`hevlayer.triton.readiness`: Triton's ServerReady/ModelReady over a plain gRPC channel
  (what ``LocalTriton.wait_ready`` asks).
- :mod:`hevlayer.triton.repository`: the GPU model repository of ``deploy/triton`` with its model
  files (``hevlayer-triton-repository``; ``--cpu`` for the CPU server, with
  :mod:`hevlayer.triton.onnx_python_model` standing in for the onnxruntime backend).
"""

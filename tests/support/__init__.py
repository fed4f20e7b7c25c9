"""Helpers shared by the tests and the benchmarks (one home; import ``support.<module>``).

Test modules import helpers from here, never from a ``conftest`` or another test module
(tests/test_helper_imports.py checks it); conftests hold fixtures and build them from these
helpers. Bench scripts import the same modules: pytest's ``pythonpath`` has ``tests`` and
``bench``, and a bench script that uses them puts ``tests/`` on ``sys.path`` first.

- ``processes``: start one claimer or gateway process on free ports.
- ``stacks``: a claimer + gateway on a fresh bucket (``SliceStack``, ``GatewayStack``,
  ``CliStack`` and the functions that start them).
- ``redis_server``: a real ``redis-server`` on a free port.
- ``cli``: running the ``hevlayer`` command, sample trees and PDFs, checks on producers' chunks.
- ``claimer_grpc``: a claimer process driven with bare stubs (``start_bare_claimer``) and
  ``new_pipeline`` over its PipelineService.
- ``pipelines``: fresh pipeline ids (``unique``) and ``create_pipeline`` through a gateway.
- ``staging``: documents (``document``) staged through one StageDocuments stream (``stage``,
  ``stage_documents``) and read back (``get_document``).
- ``leases``: a worker's ``claim`` and ``read_chunks`` through the gateway.
- ``vectors``: vectors to write without a model (``embed``, ``DIM``) or the live suite's
  model's (``model_vectors``).
- ``embedding_worker``: a claimer + gateway for embedder-worker runs (``start_stack``),
  embedders with the worker on, worded documents and the index's rows.
- ``service_http``: JSON over HTTP (``http_json``) and ``/metrics`` samples.
- ``polling``: ``eventually``, a bounded wait for background work.
- ``rpc_errors``: the field paths of a failed call's BadRequest detail (``violations``).
- ``s3``: the claimer's ``ObjectStore``, the gateway's ``S3Settings`` and a bucket's keys.
- ``milvus_lite``: Milvus Lite's gRPC server mode on a free port (a real Milvus endpoint).
- ``manifests``: the seed's example Pipeline (``SEED_PIPELINE``) and ``kubernetes_validate``.
- ``fakes``: local fakes of services that cannot run here (Turbopuffer, an LLM server).

Helpers of one directory's tests only stay next to them, named after what they hold
(``claimer/stores.py``, ``gateway/auth_stack.py``...), imported as ``claimer.stores``; never
``helpers``, ``fakes`` or ``*support*`` (tests/test_helper_imports.py). No test directory may
hold a module named ``support``: pytest puts a test's own directory first on ``sys.path``,
where it would hide this package.
"""

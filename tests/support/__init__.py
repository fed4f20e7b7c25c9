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
- ``rpc_errors``: the field paths of a failed call's BadRequest detail (``violations``).
- ``s3``: the claimer's ``ObjectStore`` and the gateway's ``S3Settings`` for a test bucket.
- ``staging``: staging documents through one StageDocuments stream (``stage_documents``).

Helpers of one directory's tests stay next to them (``claimer/stores.py``,
``gateway/helpers.py``, ``gateway/auth_stack.py``...), imported as ``claimer.stores``. No test
directory may hold a module named ``support``: pytest puts a test's own directory first on
``sys.path``, where it would hide this package.
"""

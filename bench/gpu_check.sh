#!/usr/bin/env bash
# The GPU path in one command: the deploy/triton ensemble (tokenizer -> onnxruntime encoder on the
# GPU -> pooling) served by a real tritonserver on this machine's NVIDIA GPU, then the serving and
# efficiency benches against it; every figure printed within 8 minutes (GPU_CHECK_BUDGET_S).
#
#     bench/gpu_check.sh
#
# Needs: an NVIDIA GPU with its driver (nvidia-smi), the repository's venv and local servers
# (`make bootstrap`: .venv, PostgreSQL and SeaweedFS for the pipeline bench), curl, and one of
#   * TRITON_URL=host:port   a tritonserver already serving build/triton-gpu (or the same repository);
#   * `tritonserver` on PATH with the onnxruntime and python backends (inside NVIDIA's
#     nvcr.io/nvidia/tritonserver:<yy.mm>-py3 image, with `pip install tokenizers`);
#   * docker with the NVIDIA container toolkit: the script runs TRITON_IMAGE
#     (default nvcr.io/nvidia/tritonserver:24.08-py3) with the venv's `tokenizers` mounted in.
# Options through the environment: ENCODER_ONNX (an FP16/FP32 export of all-MiniLM-L6-v2 for the GPU;
# default: the packaged int8 encoder), GPU_CHECK_BUDGET_S (default 480), TRITON_GRPC_PORT (8001),
# TRITON_HTTP_PORT (8000). Exits 2 at once, with a message, where there is no NVIDIA GPU.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUDGET="${GPU_CHECK_BUDGET_S:-480}"
START=$(date +%s)
GRPC_PORT="${TRITON_GRPC_PORT:-8001}"
HTTP_PORT="${TRITON_HTTP_PORT:-8000}"
IMAGE="${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.08-py3}"
PY="$ROOT/.venv/bin/python"
REPO="$ROOT/build/triton-gpu"
LOG="$ROOT/build/gpu_check-tritonserver.log"

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi not found); this check runs only on a machine with one." >&2
    exit 2
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi found no usable GPU:" >&2
    nvidia-smi -L >&2 || true
    exit 2
fi
if [[ ! -x "$PY" ]]; then
    echo "gpu_check: $PY is missing; run 'make bootstrap' first." >&2
    exit 1
fi

left() { echo $((BUDGET - ($(date +%s) - START))); }
# Seconds for the next step: a share of what is left, at least 1 (`timeout 0` would mean no limit).
share() { local s=$(( ($(left) - 10) / $1 )); echo $(( s > 0 ? s : 1 )); }

echo "== GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total,utilization.gpu --format=csv,noheader

echo "== model repository: $REPO"
rm -rf "$REPO"
mkdir -p "$ROOT/build"
"$ROOT/.venv/bin/hevlayer-triton-repository" --source deploy/triton/model_repository --output "$REPO" \
    ${ENCODER_ONNX:+--encoder-onnx "$ENCODER_ONNX"}

SERVER_PID=""
CONTAINER=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    if [[ -n "$CONTAINER" ]]; then docker rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

if [[ -n "${TRITON_URL:-}" ]]; then
    URL="$TRITON_URL"
    echo "== using the running Triton at $URL"
else
    URL="127.0.0.1:$GRPC_PORT"
    ARGS=(--model-repository=/models --strict-readiness=true --exit-on-error=true
          --grpc-port="$GRPC_PORT" --http-port="$HTTP_PORT" --allow-metrics=false)
    if command -v tritonserver >/dev/null 2>&1; then
        echo "== starting $(command -v tritonserver) (log: $LOG)"
        ARGS[0]="--model-repository=$REPO"
        tritonserver "${ARGS[@]}" >"$LOG" 2>&1 &
        SERVER_PID=$!
    elif command -v docker >/dev/null 2>&1; then
        # tokenizers ships abi3 wheels: the venv's copy imports in the image's Python too.
        TOKENIZERS="$("$PY" -c 'import os, tokenizers; print(os.path.dirname(tokenizers.__file__))')"
        CONTAINER="hevlayer-gpu-check-$$"
        echo "== starting $IMAGE in docker ($CONTAINER; log: $LOG)"
        docker run -d --name "$CONTAINER" --gpus all --network host --shm-size 1g \
            -v "$REPO:/models:ro" -v "$TOKENIZERS:/opt/hevlayer-py/tokenizers:ro" \
            -e PYTHONPATH=/opt/hevlayer-py "$IMAGE" tritonserver "${ARGS[@]}" >/dev/null
        (docker logs -f "$CONTAINER" >"$LOG" 2>&1 &)
    else
        echo "gpu_check: no tritonserver on PATH and no docker: start one on $REPO and set TRITON_URL." >&2
        exit 1
    fi
    echo -n "waiting for the models to be ready"
    # The encoder's TensorRT engine is built on the first load (cached under /tmp/triton-trt-cache).
    until curl -sf "http://127.0.0.1:$HTTP_PORT/v2/models/minilm/ready" >/dev/null; do
        if [[ -n "$SERVER_PID" ]] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo; echo "gpu_check: tritonserver exited:" >&2; tail -40 "$LOG" >&2; exit 1
        fi
        if (( $(left) < 240 )); then
            echo; echo "gpu_check: Triton not ready with 4 minutes of the budget left:" >&2; tail -40 "$LOG" >&2
            exit 1
        fi
        echo -n .
        sleep 2
    done
    echo " ready after $(( $(date +%s) - START ))s"
fi

echo "== serving: raw Triton on the GPU ensemble (bench/triton_serving.py)"
timeout "$(share 3)" "$PY" bench/triton_serving.py --triton-url "$URL" --model-name minilm \
    --skip-in-process --batch 64 --concurrency 4 --realistic 1024 --short 4096 --rounds 3

echo "== efficiency: the pipeline (stage -> claim -> embed -> write) vs raw Triton (bench/pipeline_efficiency.py)"
timeout "$(share 1)" "$PY" bench/pipeline_efficiency.py --triton-url "$URL" --model-name minilm \
    --batch 64 --concurrency 4 --chunks 1024 --rounds 3

echo "== gpu_check done in $(( $(date +%s) - START ))s"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader

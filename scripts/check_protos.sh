#!/usr/bin/env bash
# Checks the v1 API protos (`make check-protos`; part of `make test` and CI):
#   1. buf lint (rules in buf.yaml);
#   2. the committed generated code in libs/common/src/hevlayer/api equals a
#      fresh `scripts/gen_protos.py` run (done in a scratch copy, so the work
#      tree is never touched), and no generated file is left untracked;
#   3. buf breaking against the previous commit, when HEAD~1 exists and has protos/.
# Needs the dev venv (`make bootstrap`): .venv/bin/buf and grpcio-tools.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${HEVLAYER_VENV:-.venv}/bin
API=libs/common/src/hevlayer/api
BUF=("$BIN/buf")

echo "check-protos: buf lint ($(find protos -name '*.proto' | wc -l) files under protos/)"
"${BUF[@]}" lint --error-format text

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/scripts" "$scratch/libs/common/src"
cp -R protos "$scratch/protos"
cp scripts/gen_protos.py "$scratch/scripts/gen_protos.py"
echo "check-protos: regenerating $API in a scratch copy"
if ! "$BIN/python" "$scratch/scripts/gen_protos.py" >"$scratch/gen.log" 2>&1; then
    cat "$scratch/gen.log" >&2
    echo "check-protos: FAIL: scripts/gen_protos.py failed" >&2
    exit 1
fi
if ! diff -r -x __pycache__ "$scratch/$API" "$API" >"$scratch/diff.txt"; then
    head -n 80 "$scratch/diff.txt"
    echo "check-protos: FAIL: $API is not what scripts/gen_protos.py generates;" \
        "run 'make protos' and commit the result" >&2
    exit 1
fi
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    untracked=$(git ls-files --others --exclude-standard -- "$API")
    if [[ -n "$untracked" ]]; then
        echo "$untracked"
        echo "check-protos: FAIL: generated files above are not tracked by git; git add them" >&2
        exit 1
    fi
fi
echo "check-protos: generated code is up to date ($(find "$API" -name '*_pb2*.py*' | wc -l) files)"

if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "check-protos: not a git work tree; buf breaking skipped"
elif ! base=$(git rev-parse --verify --quiet 'HEAD~1^{commit}'); then
    echo "check-protos: no HEAD~1 (first commit or shallow clone); buf breaking skipped"
elif ! git cat-file -e "$base:protos" 2>/dev/null; then
    echo "check-protos: HEAD~1 has no protos/; buf breaking skipped"
else
    git_dir=$(git rev-parse --absolute-git-dir)
    if git cat-file -e "$base:buf.yaml" 2>/dev/null; then
        against="$git_dir#ref=$base"
    else
        against="$git_dir#ref=$base,subdir=protos"
    fi
    echo "check-protos: buf breaking against HEAD~1 ($(git rev-parse --short "$base"))"
    "${BUF[@]}" breaking --error-format text --against "$against"
fi
echo "check-protos: OK"

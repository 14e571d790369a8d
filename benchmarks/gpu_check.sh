#!/usr/bin/env bash
# The GPU check (issue 7, point 10), one command on a lent GPU machine, under 8 minutes:
#
#   benchmarks/gpu_check.sh [--out DIR] [--dry-run]     # figures: DIR (default $OUT) / gpu_check.md, .json
#   benchmarks/gpu_check.sh --fetch-wheels              # here, before: the packages that machine lacks
#
# It runs the CUDA-branch tests, bfloat16 loading on the GPU and benchmarks/constrained.py on the 150k-wide
# model at batch 1 and 16 (benchmarks/gpu_check.py says what each step does). Without CUDA it is a dry
# run of what a CPU can do quickly, exiting 0 when that passes and listing what it skipped.
#
# The GPU machines of this workplace hold torch but not flexjudge's other needs and fetch nothing, so
# `--fetch-wheels` downloads them (Python 3.12, x86-64) into .whl/ (add `/.whl/` to .git/info/exclude and
# carry `.whl`); this script installs whatever is in .whl/ before it starts.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
    platforms=()
    for p in manylinux_2_{17,24,27,28,31,34}_x86_64 manylinux2014_x86_64; do
        platforms+=(--platform "$p")
    done
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl \
        transformers==5.24.0 llguidance==1.9.1 xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2 \
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions \
        jsonschema==4.26.0 jsonschema-specifications referencing rpds-py
    du -sh .whl
    exit 0
fi

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/flexjudge-site .whl/*.whl
    export PYTHONPATH="/tmp/flexjudge-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# This working tree's flexjudge, whether or not it is installed; no hub, ever.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# The first Python that has torch: $PYTHON, the active virtual environment, the CI one (.ci/run), then
# python3 on the PATH.
for candidate in "${PYTHON:-}" "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" .venv-ci/bin/python python3 python; do
    if [ -n "$candidate" ] && "$candidate" -c "import torch" 2>/dev/null; then
        exec timeout 470 "$candidate" benchmarks/gpu_check.py "$@"
    fi
done
echo "gpu_check: no Python with torch found; set PYTHON=/path/to/python" >&2
exit 2

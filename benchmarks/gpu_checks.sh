#!/usr/bin/env bash
# Issue 13's GPU measurements in one call of the device tool (an H200 lease: the machine has torch but not
# open_clip, and reaches no package index). Two steps:
#
#   bash benchmarks/gpu_checks.sh --prepare     # here: open_clip's pure-Python wheels into .whl/ (ignored)
#   bash benchmarks/gpu_checks.sh               # there, through the device tool, with carry [".whl"]
#
# The second step installs the wheels into /tmp/site, puts src/ on PYTHONPATH (the machine's own torch is
# used, not pyproject's pin) and runs benchmarks/eval_throughput.py at its default sizes with --parity:
# images/s of (a) our path, (b) PIL + torchvision through a DataLoader, (c) pure compute, for ViT-B-32 and
# ViT-L-14 with random weights. Results land in $OUT (the device tool's folder) or benchmarks/out/.
# Arguments after the first step's are passed to eval_throughput.py (e.g. --device cpu --images 16 to try
# it on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0)

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p .git/info && { grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude; }
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${wheels[@]}"
    ls -l .whl
    exit 0
fi

out="${OUT:-benchmarks/out}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$out/machine.txt"
python3 benchmarks/eval_throughput.py --parity --out "$out/eval_throughput.json" "$@" 2>&1 | tee "$out/eval_throughput.log"

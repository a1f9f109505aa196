#!/usr/bin/env bash
# The GPU measurements in one call of the device tool (an H200 lease: the machine has torch but not open_clip,
# and reaches no package index). Two steps:
#
#   bash benchmarks/gpu_checks.sh --prepare     # here: open_clip's pure-Python wheels into .whl/ (ignored)
#   bash benchmarks/gpu_checks.sh               # there, through the device tool, with carry [".whl"]
#
# The second step installs the wheels into /tmp/site, puts src/ on PYTHONPATH (the machine's own torch is
# used, not pyproject's pin) and runs three parts, each under a time limit of its own (each writes its JSON
# after every row, so a part stopped at its limit keeps what it measured):
#   1. eval_throughput.py --parity: images/s of (a) our path, (b) PIL + torchvision through a DataLoader,
#      (c) pure compute, for ViT-B-32, ViT-B-16 and ViT-L-14 with random weights; fp16/bf16 parity;
#   2. gpu_sweep.py: evaluate-reference, decompose, a reduced cart merge-eval sweep and adamerging adapt-eval
#      through the real verbs on ViT-B-32 with 8 synthetic tasks at the real split sizes (16 GB of images,
#      written to /dev/shm when it has room);
#   3. adaptation_speed.py --bf16: seconds per step and peak memory of the three adaptive methods per model.
# Results land in $OUT (the device tool's folder) or benchmarks/out/: machine.txt, gpu_checks.log,
# eval_throughput.json, gpu_sweep.json, gpu_sweep_verbs.log, adaptation_speed.json.
# For a CPU trial, run the three scripts themselves at the reduced sizes their docstrings give.
set -uo pipefail
cd "$(dirname "$0")/.."
wheels=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0)

if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    mkdir -p .git/info && { grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude; }
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${wheels[@]}"
    ls -l .whl
    exit 0
fi

out="${OUT:-benchmarks/out}"
mkdir -p "$out"
log="$out/gpu_checks.log"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
    lscpu | grep -E "^Model name|^CPU\(s\)" || true
    df -h /dev/shm /tmp | tail -n +2
} 2>&1 | tee "$out/machine.txt"

part() {  # part NAME SECONDS COMMAND...: run one part under its time limit, logging its status and wall time
    local name=$1 limit=$2 started=$SECONDS status
    shift 2
    echo "===== $name (limit ${limit} s)" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
    echo "===== $name: exit $status after $((SECONDS - started)) s" | tee -a "$log"
}

scratch=/dev/shm/mergeflow-gpu-sweep
if (( $(df --output=avail -BG /dev/shm 2>/dev/null | tail -1 | tr -dc 0-9) < 30 )); then
    scratch=/tmp/mergeflow-gpu-sweep
fi
# Sizes and limits as on the H200 of 2026-12-04 (benchmarks/README.md): the first part took about 100 s at
# these sizes, the second 189 s; the third stops at its limit while building adarank's SVDs on ViT-L-14.
part eval_throughput 150 python3 benchmarks/eval_throughput.py --parity --images 1024 --large-images 256 \
    --repeats 1 --out "$out/eval_throughput.json"
part gpu_sweep 250 python3 benchmarks/gpu_sweep.py --workdir "$scratch" --logs "$out/gpu_sweep_verbs.log" \
    --out "$out/gpu_sweep.json"
rm -rf "$scratch"
part adaptation_speed 170 python3 benchmarks/adaptation_speed.py --steps 5 --bf16 --out "$out/adaptation_speed.json"

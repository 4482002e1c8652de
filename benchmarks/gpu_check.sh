#!/usr/bin/env bash
# The engine on a GPU in one command (issue #31), under 8 minutes on one GPU:
#   1. installs the project without touching the machine's torch (pip install --no-deps -e .),
#   2. runs the device-relevant tests (tests/ntk/test_device.py, tests/ntk/test_rules.py) on
#      the device (COSMO_TEST_DEVICE),
#   3. runs the real-models table (pass limit, trace and full kernel, peak memory) on it,
#   4. writes everything to one results file.
#
#   bash benchmarks/gpu_check.sh                      # on a CUDA machine: results in gpu_check.txt
#   bash benchmarks/gpu_check.sh --device cpu --smoke --no-install --out /tmp/check.txt   # CI
#
# --smoke: shrunken models (benchmarks/real_models.py) and one round; --no-install: use the
# environment as it is. PYTHON selects the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda smoke=0 install=1 out=gpu_check.txt
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --no-install) install=0; shift ;;
    *) echo "Invalid argument: $1. Use --device NAME, --out FILE, --smoke, --no-install." >&2
       exit 2 ;;
  esac
done
py=${PYTHON:-python3}
start=$(date +%s)
{
  echo "# gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), device $device"
  if [ "$install" = 1 ]; then
    "$py" -m pip install --quiet --no-deps -e . 2>&1 | tail -3
  fi
  "$py" - <<PY
import torch, platform
print("torch", torch.__version__, "python", platform.python_version())
if "$device".startswith("cuda"):
    p = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    print("cuda", torch.version.cuda, p.name, f"{total / 2**30:.1f} GiB, free {free / 2**30:.1f} GiB",
          "tf32", torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
PY
  echo "## tests on $device"
  select=()
  if [ "$smoke" = 1 ]; then select=(-k "tanh or budget or linear-rows"); fi
  COSMO_TEST_DEVICE=$device timeout 240 "$py" -m pytest tests/ntk/test_device.py \
    tests/ntk/test_rules.py -q -p no:cacheprovider -W ignore::UserWarning "${select[@]}" \
    2>&1 | tail -5
  echo "## real models on $device (CPU time on a CPU, one thread; wall time on CUDA)"
  if [ "$smoke" = 1 ]; then
    timeout 200 "$py" benchmarks/bench_ntk.py --models real ResNet --smoke --threads 1 \
      --device "$device"
  else
    timeout 300 "$py" benchmarks/bench_ntk.py --models real ResNet ViT GPT --sizes 16 \
      --repeats 3 --threads 1 --device "$device"
  fi
  echo "# done in $(( $(date +%s) - start )) s"
} 2>&1 | tee "$out"
grep -q " passed" "$out" && ! grep -qE " failed|error" "$out"

#!/usr/bin/env bash
# The whole GPU part of benchmarks/train_throughput.py on one lent GPU (H100/H200), in under 8
# minutes: its JSON line, the per-setting log and the machine's versions go to $OUT.
#
#   1. Here, on a machine that reaches PyPI (once; .whl/ is git-ignored):
#        bash benchmarks/gpu_train_throughput.sh fetch
#      downloads the wheels the GPU image lacks or has older (TRL, PEFT, datasets and what it
#      needs, Liger Kernel; pyarrow in case the image's is older than datasets wants) for
#      CPython 3.12 x86-64, about 58 MB (the device tool carries up to 64 MiB with the tree).
#   2. On the GPU machine, with the device tool:
#        run(command="bash benchmarks/gpu_train_throughput.sh", carry=[".whl"], timeout_s=600)
#      It installs the wheels into /tmp/site (no network there), records nvidia-smi and the
#      versions, and runs `train_throughput.py --gpu`, which ends its last setting within 7
#      minutes of its first and rewrites its JSON after every setting (a 9.5-minute timeout
#      guards the whole).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(trl==1.16.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 liger-kernel==0.8.5)
PYARROW=pyarrow==26.0.1

if [ "${1:-}" = "fetch" ]; then
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}" "$PYARROW"
  ls -la .whl
  exit 0
fi

OUT="${OUT:-benchmarks/out/gpu}"
mkdir -p "$OUT"
PY="${PY:-python3}"  # PY=.venv/bin/python GPU_BENCH_ARGS=--smoke: the same script on a CPU machine
if ls .whl/*.whl >/dev/null 2>&1; then
  # Everything but pyarrow first; pyarrow only when the image's is older than datasets needs.
  for wheel in $(ls .whl/*.whl | grep -v pyarrow); do
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheel" \
      || echo "not installed: $wheel (environment.txt shows what the benchmark got)" >&2
  done
  if ! $PY -c "import pyarrow, sys; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/pyarrow-*.whl
  fi
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{
  nvidia-smi || true
  $PY - <<'EOF'
import importlib.metadata as md
for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "pyarrow", "liger-kernel", "triton"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "missing")
import torch
print("cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
try:
    from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    print("varlen_attn available")
except ImportError as e:
    print("varlen_attn missing:", e)
EOF
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"
timeout 570 $PY benchmarks/train_throughput.py --gpu ${GPU_BENCH_ARGS:-} --out "$OUT" 2> >(tee "$OUT/driver.log" >&2)

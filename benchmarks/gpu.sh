#!/usr/bin/env bash
# The benchmark suite on a CUDA GPU, sizes scaled up (problem 2 at N = 1e7, problem 5 at
# 100,000 data sets). Installs nothing: it needs a Python with jax[cuda], mlefit
# (pip install -e .) and the bench extra already present. Meant to finish in well under
# 8 minutes on one H100; the table goes to benchmarks/RESULTS-gpu.md.
#
#   bash benchmarks/gpu.sh                 # PYTHON=/path/to/python to choose the interpreter
#   bash benchmarks/gpu.sh --only floor    # extra arguments go to benchmarks.run
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x /work/venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=/work/venv/bin/python

# Never reach for the network, and do not grab all GPU memory up front (peers and the
# memory probe share the device; peak_bytes_in_use is read from the allocator).
export PIP_NO_INDEX=1 HF_HUB_OFFLINE=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false

"$PY" - <<'EOF'
import sys
import jax
if jax.default_backend() != "gpu":
    sys.exit(f"benchmarks/gpu.sh: JAX sees no GPU (backend {jax.default_backend()!r}); "
             "install jax[cuda] in this environment first")
print("devices:", jax.devices())
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

start=$(date +%s)
timeout 450 "$PY" -m benchmarks.run --preset gpu --out benchmarks/RESULTS-gpu.md "$@"
echo "gpu.sh: $(( $(date +%s) - start )) s"

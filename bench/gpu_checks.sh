#!/usr/bin/env bash
# The GPU measurements the open issues ask for, as one prepared run for a lent device machine (about 10 minutes).
#
#   #3 Gaunt:        bench/gaunt_vs_e3nn.py on CUDA, N = 20000, C = 32, lmax 1…8 (target: ≥ 50× e3nn at lmax 6)
#   #7 PropMolFlow:  bench/propmolflow_sampling.py on CUDA, fp32 / tf32 / bf16 (target: ≥ 300 molecules/s)
#
# The device image has torch, e3nn, torch-geometric and Lightning but no RDKit or Hydra; these two benchmarks need
# neither, so the checkout runs as is with PYTHONPATH=. (no install). Usage, from the repository root there:
#
#   bash bench/gpu_checks.sh            # writes its logs to $OUT (the device tool's folder) or outputs/gpu
#
# Each step has its own time limit so that one slow step cannot eat the lease; the logs say which finished.
set -uo pipefail
out=${OUT:-outputs/gpu}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$python" -c "import torch, e3nn; print('torch', torch.__version__, 'e3nn', e3nn.__version__)" | tee -a "$out/gpu.txt"

timeout 240 "$python" bench/gaunt_vs_e3nn.py --device cuda --n 20000 --channels 32 --repeats 10 \
    2>&1 | tee "$out/gaunt_vs_e3nn_cuda.txt"
echo "gaunt_vs_e3nn exit ${PIPESTATUS[0]}" | tee -a "$out/gpu.txt"

timeout 240 "$python" bench/propmolflow_sampling.py --device cuda --precisions fp32 tf32 bf16 \
    2>&1 | tee "$out/propmolflow_sampling_cuda.txt"
echo "propmolflow_sampling exit ${PIPESTATUS[0]}" | tee -a "$out/gpu.txt"

#!/usr/bin/env bash
# Every GPU check the open issues ask for, as one prepared run for a lent device machine (under 8 minutes on
# one H100/H200), ending in one summary table:
#
#   smoke   train.py with trainer=gpu for a few steps, every model family (SchNet, DimeNet++, GauntNet, PONITA,
#           affine CNN, PropMolFlow, GVP regressor) on the committed fixtures, then geomol.generate on CUDA from
#           the PropMolFlow smoke checkpoint, scored by the regressor (#14 §5, #15 §5)
#   gaunt   bench/gaunt_vs_e3nn.py on CUDA, N = 20000, C = 32 (#3, #19)
#   sample  bench/propmolflow_sampling.py on CUDA at paper size, fp32 / tf32 / bf16 (target ≥ 300 molecules/s)
#
#   bash bench/gpu_checks.sh                  # on the device machine, from the repository root
#   DEVICE=cpu bash bench/gpu_checks.sh       # dry run on a CPU with tiny sizes (tested in CI so it cannot rot)
#
# The device image has torch, e3nn, torch-geometric and Lightning but no RDKit or Hydra: build a folder of what
# it lacks here and carry it (the device tool's `carry`), it is put on PYTHONPATH when present:
#
#   pip install --target .gpu_deps hydra-core omegaconf rdkit qm9pack==1.0.3 ase   # about 60 MB
#
# Logs go to $OUT (the device tool's folder) or outputs/gpu. Each step has its own time limit, so one slow step
# cannot eat the lease; the table says which finished.
set -uo pipefail
device=${DEVICE:-cuda}
out=${OUT:-outputs/gpu}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 GEOMOL_DATA=$out/data GEOMOL_OUTPUTS=$out/runs
[ -d .gpu_deps ] && export PYTHONPATH=$PYTHONPATH:$PWD/.gpu_deps
python=${PYTHON:-python3}
summary=$out/summary.txt
: > "$summary"

if [ "$device" = cuda ]; then
    trainer="trainer=gpu"; steps=30; n=20000; channels=32; sample_batch=512; precisions="fp32 tf32 bf16"; lmax="1 2 3 4 5 6 7 8"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
else
    trainer="trainer=cpu"; steps=2; n=200; channels=4; sample_batch=2; precisions="fp32"; lmax="1 2"
fi
"$python" -c "import torch, e3nn; print('torch', torch.__version__, 'e3nn', e3nn.__version__, 'cuda', torch.cuda.is_available())" \
    | tee -a "$out/gpu.txt"

# step NAME LIMIT_S COMMAND...: run one check with its own time limit, log it, add a row to the summary.
step() {
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    local status=ok; [ $rc -ne 0 ] && status="FAILED (exit $rc, see $name.log)"; [ $rc -eq 124 ] && status="TIMEOUT after ${limit}s"
    printf '%-22s %6ss  %s\n' "$name" "$((SECONDS - start))" "$status" | tee -a "$summary"
}

qm9="data.source=tests/fixtures/qm9 data.subset=null data.batch_size=8 data.eval_batch_size=8"
rmd17="data.root=tests/fixtures/rmd17 data.num_train=50 data.num_val=10 data.num_test=10 data.batch_size=4 data.eval_batch_size=4"
common="$trainer trainer.max_steps=$steps trainer.max_epochs=1000 trainer.limit_val_batches=2 trainer.limit_test_batches=2 trainer.enable_progress_bar=false"
smoke() {  # smoke NAME OVERRIDES...: a short train.py run in its own run directory
    local name=$1; shift
    # shellcheck disable=SC2086
    step "train_$name" 240 "$python" train.py "$@" $common "hydra.run.dir=$out/runs/$name"
}
# shellcheck disable=SC2086
{
smoke schnet       model=schnet data=qm9 $qm9
smoke dimenetpp    model=dimenetpp data=qm9 $qm9 model.net.hidden_channels=32 model.net.num_blocks=2
smoke gaunt        model=gaunt data=rmd17 $rmd17 model.net.channels=8 model.net.num_layers=1
smoke ponita       model=ponita data=rmd17 $rmd17 model.net.hidden_channels=32 model.net.num_layers=2
smoke affine_cnn   model=affine_cnn data=mnist_affine data.root=tests/fixtures/mnist data.batch_size=4
smoke regressor    model=gvp_regressor data=qm9 $qm9 data.train_half=regressor 'data.target=[gap,mu]' model.net.scalars=32
smoke propmolflow  experiment=propmolflow_demo $qm9 trainer.precision=32 model.val_molecules=0
}
step generate 240 "$python" -m geomol.generate ckpt="$out/runs/propmolflow/checkpoints/last.ckpt" num_molecules=$((4 * sample_batch)) \
    output="$out/generated.sdf" condition.gap=sample device="$device" batch_size=$sample_batch steps=$((steps * 5)) \
    regressor="$out/runs/regressor/checkpoints/last.ckpt" progress=false
# shellcheck disable=SC2086
step gaunt_vs_e3nn 240 "$python" bench/gaunt_vs_e3nn.py --device "$device" --n "$n" --channels "$channels" --repeats 3 --lmax $lmax
# shellcheck disable=SC2086
step propmolflow_sampling 240 "$python" bench/propmolflow_sampling.py --device "$device" --batch-size "$sample_batch" \
    --steps $((steps * 2)) --precisions $precisions --versions after --check 0

echo
echo "geomol GPU checks on $device ($(date -u +%F\ %T) UTC):"
cat "$summary"
grep -h "mol/s\|molecules_per_second\|^fp32\|^tf32\|^bf16" "$out/generate.log" "$out/propmolflow_sampling.log" 2>/dev/null | head -12
! grep -q "FAILED\|TIMEOUT" "$summary"

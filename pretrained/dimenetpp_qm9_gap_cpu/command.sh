#!/bin/bash
# DimeNet++ (paper size, experiment=dimenetpp_qm9) on QM9's HOMO-LUMO gap, with a CPU schedule: the authors'
# AMSGrad 1e-3 and EMA 0.999, but 500 warm-up steps and a cosine to 1e-5 over 8,000 steps of batch 32 (instead of
# 3,000 warm-up steps and 0.01^(step/4M) over 3M steps). $1: run name; rest: overrides.
cd "$(dirname "$0")/../.."   # the repository root
name=$1; shift
export OMP_NUM_THREADS=1
exec nice -n "${NICE:-10}" .venv/bin/python train.py experiment=dimenetpp_qm9 data.target=gap \
  '~model.scheduler' '+model.scheduler={_target_:geomol.tasks.schedules.cosine_with_warmup,_partial_:true,warmup_steps:500,total_steps:8000,min_factor:0.01}' \
  trainer.max_steps=8000 trainer.val_check_interval=2000 trainer.enable_progress_bar=false trainer.log_every_n_steps=100 \
  callbacks.lr_monitor.logging_interval=step \
  hydra.run.dir=outputs/$name "$@"

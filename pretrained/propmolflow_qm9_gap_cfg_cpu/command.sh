#!/bin/bash
# Classifier-free-guidance fine-tune of the gap-conditioned 1.05 M PropMolFlow (propmolflow_qm9_gap_mid_cpu after its
# cosine tail): a fifth of the molecules train without their condition, fresh Adam, cosine 1.5e-4 -> 3e-5 over 2,500 steps.
# $1: run name; $2: the checkpoint to start from (init_from); rest: overrides.
cd "$(dirname "$0")/../.."   # the repository root
name=$1; init=$2; shift 2
exec bash pretrained/propmolflow_qm9_gap_mid_cpu/command.sh "$name" \
  model.net.scalars=128 model.net.vectors=16 model.net.edge_features=64 model.net.n_updates=5 \
  trainer.precision=bf16-mixed callbacks.ema.decay=0.999 trainer.val_check_interval=500 \
  callbacks.ema.warmup=false callbacks.ema.validate_raw=false \
  model.condition_dropout=0.2 model.optimizer.lr=1.5e-4 \
  '+model.scheduler={_target_:torch.optim.lr_scheduler.CosineAnnealingLR,_partial_:true,T_max:2500,eta_min:3.0e-5}' \
  model.scheduler_interval=step trainer.max_steps=2500 trainer.max_time=00:01:10:00 \
  "init_from=$init" "$@"

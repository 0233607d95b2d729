#!/bin/bash
# GVP regressor (six conditioning properties) on the regressor half of QM9's training split.
cd "$(dirname "$0")/../.."   # the repository root
export OMP_NUM_THREADS=1
exec nice -n "${NICE:-10}" .venv/bin/python train.py model=gvp_regressor data=qm9 data.train_half=regressor \
  'data.target=[alpha,cv,mu,homo,lumo,gap]' data.batch_size=64 data.eval_batch_size=256 \
  model.optimizer.lr=1e-3 \
  '~model.scheduler' '+model.scheduler={_target_:geomol.tasks.schedules.cosine_with_warmup,_partial_:true,warmup_steps:500,total_steps:39100,min_factor:0.01}' \
  model.scheduler_interval=step \
  trainer.max_epochs=50 trainer.limit_val_batches=0.25 trainer.enable_progress_bar=false trainer.log_every_n_steps=100 \
  callbacks.lr_monitor.logging_interval=step \
  hydra.run.dir=outputs/regressor_qm9 "$@"

#!/bin/bash
# Gap-conditioned PropMolFlow on the generator half of the full QM9 training split. $1: run name; rest: overrides.
cd "$(dirname "$0")/../.."   # the repository root
name=$1; shift
export OMP_NUM_THREADS=1
exec nice -n "${NICE:-10}" .venv/bin/python train.py experiment=propmolflow_demo trainer=default data.subset=null \
  data.batch_size=64 data.eval_batch_size=128 trainer.max_epochs=1000 trainer.limit_val_batches=0.25 \
  trainer.val_check_interval=250 trainer.enable_progress_bar=false trainer.log_every_n_steps=50 \
  model.val_molecules=32 model.sample_every_n_epochs=1 callbacks.ema.decay=0.99 test=false \
  hydra.run.dir=outputs/$name "$@"

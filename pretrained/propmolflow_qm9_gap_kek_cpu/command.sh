#!/bin/bash
# Gap-conditioned PropMolFlow at the shipped size (128/16/64, 5 updates: 1.05 M) from scratch on the generator half,
# trained on Kekulé structures (data.kekulize=true) with condition dropout 0.2. $1: run name; rest: overrides.
cd "$(dirname "$0")/../.."
name=$1; shift
export OMP_NUM_THREADS=${THREADS:-2}
exec nice -n "${NICE:-10}" .venv/bin/python train.py experiment=propmolflow_demo trainer=default data.subset=null \
  data.batch_size=64 data.eval_batch_size=128 trainer.max_epochs=1000 trainer.limit_val_batches=0.25 \
  trainer.val_check_interval=500 trainer.enable_progress_bar=false trainer.log_every_n_steps=50 \
  model.val_molecules=32 model.sample_every_n_epochs=1 test=false \
  model.net.scalars=128 model.net.vectors=16 model.net.edge_features=64 model.net.n_updates=5 \
  trainer.precision=bf16-mixed callbacks.ema.decay=0.999 model.condition_dropout=0.2 model.compile=true \
  data.kekulize=true hydra.run.dir=outputs/$name "$@"

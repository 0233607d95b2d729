#!/bin/bash
# GauntNet force field on rMD17 ethanol (split 01), MACE's rMD17 recipe (experiment=gaunt_rmd17). $1: run name; rest: overrides.
# First sitting: trainer.max_time=00:00:30:00 (the equal-budget comparison with PONITA); second: 00:01:25:00, same folder.
cd "$(dirname "$0")/../.."   # the repository root
name=$1; shift
export OMP_NUM_THREADS=1
exec nice -n "${NICE:-10}" .venv/bin/python train.py experiment=gaunt_rmd17 data.molecule=ethanol \
  data.root=${RMD17:-../shared/data/rmd17} trainer.max_epochs=216 trainer.enable_progress_bar=false \
  hydra.run.dir=outputs/$name "$@"

#!/bin/bash
# SchNet force field on rMD17 ethanol (split 01), geomol's SchNet defaults (model=schnet data=rmd17). $1: run name; rest: overrides.
# First sitting: trainer.max_time=00:00:15:00 test=false (bench/equal_budget.sh); second: trainer.max_time=00:00:48:00, same folder.
cd "$(dirname "$0")/../.."   # the repository root
name=$1; shift
export OMP_NUM_THREADS=1
exec nice -n "${NICE:-10}" .venv/bin/python train.py model=schnet data=rmd17 data.molecule=ethanol \
  data.root=${RMD17:-../shared/data/rmd17} trainer.max_epochs=300 trainer.enable_progress_bar=false \
  hydra.run.dir=outputs/$name "$@"

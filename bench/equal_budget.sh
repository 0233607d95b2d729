#!/bin/bash
# Equal-budget force-field runs on rMD17 ethanol (split 01): SchNet, DimeNet++, GauntNet and PONITA, each with
# its recipe, the same wall budget of training minutes, one thread, one after another (so they share the
# machine the same way), then bench/equal_budget.py draws force MAE against training minutes.
#   BUDGET=00:00:15:00 bash bench/equal_budget.sh outputs/equal_budget      (RMD17=<folder of the npz files>)
# Schedule horizons are set to what fits ~3 hours of each model, as in pretrained/gaunt_rmd17_ethanol_cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/equal_budget}
budget=${BUDGET:-00:00:15:00}
data=${RMD17:-../shared/data/rmd17}
export OMP_NUM_THREADS=1
common=(data.molecule=ethanol "data.root=$data" "trainer.max_time=$budget" trainer.enable_progress_bar=false test=false)
run() {  # name, overrides...
  local name=$1; shift
  echo "== $name ($budget)"
  nice -n "${NICE:-15}" .venv/bin/python train.py "$@" "${common[@]}" "hydra.run.dir=$out/$name" > "$out/$name.log" 2>&1
}
mkdir -p "$out"
run schnet model=schnet data=rmd17 trainer.max_epochs=300
run dimenetpp experiment=dimenetpp_rmd17
run gauntnet experiment=gaunt_rmd17 trainer.max_epochs=216
run ponita experiment=ponita_rmd17 trainer.max_epochs=120
.venv/bin/python bench/equal_budget.py "$out/schnet" "$out/dimenetpp" "$out/gauntnet" "$out/ponita" \
  --png "$out/equal_budget.png"

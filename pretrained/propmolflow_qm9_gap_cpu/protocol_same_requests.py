# The shipped 0.23M checkpoint (trained before condition=sample existed) on the same requested gaps as the mid run.
import torch
from geomol.checkpoints import load_task
from geomol.data.chem import write_sdf
from geomol.metrics.conditional import quantile_sample
torch.set_num_threads(2)
mid = load_task("pretrained/propmolflow_qm9_gap_mid_cpu/model.ckpt")
values = quantile_sample(mid.hparams.test_quantiles[0], 1000, torch.Generator().manual_seed(0))
old = load_task("pretrained/propmolflow_qm9_gap_cpu/model.ckpt")
mols = old.sample(1000, condition={"gap": values.tolist()}, seed=0, progress=False)
write_sdf(mols, "outputs/eval/old_1000.sdf")

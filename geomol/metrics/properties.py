"""Property errors of generated molecules, measured by a trained property regressor (the evaluator).

PropMolFlow's protocol (Zeng et al. 2025, Sec. 3.2): the generator trains on one half of QM9's
training split and a GVP regressor on the other half; the regressor's predictions on generated
molecules are compared with the values the molecules were conditioned on. Out of distribution,
every molecule is conditioned on the 99th percentile of the property over the training half
(:func:`geomol.data.generation.ood_target`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from rdkit import Chem
from torch import Tensor

__all__ = ["predict_properties", "property_mae"]


@torch.no_grad()
def predict_properties(
    model: Callable[[Tensor, Tensor, Tensor], Tensor],
    mols: Sequence[Chem.Mol],
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Tensor:
    """Run a property model ``model(z, pos, batch) -> [B, T]`` on RDKit molecules with 3D conformers.

    Returns ``[len(mols), T]`` (float64, on the CPU); molecules without atoms or conformer raise.
    """
    if not mols:
        raise ValueError("no molecules to predict properties of")
    outputs = []
    for start in range(0, len(mols), batch_size):
        zs, positions, batch = [], [], []
        for k, mol in enumerate(mols[start : start + batch_size]):
            if mol.GetNumAtoms() == 0 or mol.GetNumConformers() == 0:
                raise ValueError(f"molecule {start + k} has no atoms or no 3D conformer")
            zs.append(torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()]))
            positions.append(torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float32))
            batch.append(torch.full((mol.GetNumAtoms(),), k))
        out = model(torch.cat(zs).to(device), torch.cat(positions).to(device), torch.cat(batch).to(device))
        outputs.append(out.detach().double().cpu())
    return torch.cat(outputs)


def property_mae(predicted: Tensor, target: Tensor | float) -> float:
    """Mean absolute error between predictions ``[M]`` and targets (one value or one per molecule)."""
    predicted = torch.as_tensor(predicted, dtype=torch.float64).flatten()
    target = torch.as_tensor(target, dtype=torch.float64).flatten()
    if target.numel() not in (1, predicted.numel()):
        raise ValueError(f"{target.numel()} targets for {predicted.numel()} predictions")
    return float((predicted - target).abs().mean())

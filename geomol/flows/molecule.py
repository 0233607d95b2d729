"""The joint flow over a molecule: positions (continuous) and atom types, charges, bonds (CTMC masks).

Training draws, for each molecule, a time ``t``, a prior sample aligned to the molecule, and the
noisy molecule ``g_t`` on the conditional paths; the vector field predicts the clean molecule and is
scored by MSE on positions and cross-entropy on masked tokens (FlowMol, Dunn & Koes 2024, Eq. 10).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from geomol.flows.ctmc import MaskedFlow
from geomol.flows.interpolants import Schedule, interpolate, make_schedule
from geomol.flows.priors import align_prior, center, centered_gaussian

__all__ = ["MoleculeState", "MolecularFlow", "MODALITIES", "CHARGES"]

# Positions, atom types, formal charges, bond orders (FlowMol's x, a, c, e).
MODALITIES = ("x", "a", "c", "e")


# Formal charges the flow can produce (class k is charge CHARGES[k]); QM9 has only -1, 0, +1.
CHARGES = (-2, -1, 0, 1, 2, 3)


class MoleculeState(NamedTuple):
    """A batch of molecules on the complete graph at time ``t``; categorical values are class indices.

    The four variables are what the flow moves; ``pairs``, ``batch`` and ``t`` say which atoms and
    pairs belong to which molecule and where on the path it is. The vector field needs all seven
    (:class:`~geomol.models.propmolflow.PropMolFlow`); per-modality operations need only the first four.

    Shapes:
        pos ``[N, 3]``, atom_type ``[N]``, charge ``[N]``, bond_type ``[P]`` (one token per pair
        ``i < j``), pairs ``[2, P]``, batch ``[N]``, t ``[B]``
    """

    pos: Tensor  # [N, 3]
    atom_type: Tensor  # [N]
    charge: Tensor  # [N]
    bond_type: Tensor  # [P], one token per pair i < j
    pairs: Tensor | None = None  # [2, P], i < j (geomol.flows.bonds.upper_pairs)
    batch: Tensor | None = None  # [N], molecule of each atom
    t: Tensor | None = None  # [B], time of each molecule


class MolecularFlow:
    """Conditional paths, losses and per-modality schedules of the molecular flow.

    Args:
        num_atom_types, num_charges, num_bond_types: category counts (without the mask state).
        schedule: ``"linear"`` or ``"cosine"``, or a mapping giving one per modality ``x, a, c, e``.
        cosine_nu: exponent ``ν`` of the cosine schedule, one number or one per modality.
        prior_std: standard deviation of the Gaussian position prior (Å).
        align: align the prior to each molecule (Hungarian permutation + Kabsch rotation).
    """

    def __init__(
        self,
        num_atom_types: int = 5,
        num_charges: int = 6,
        num_bond_types: int = 5,
        schedule: str | Mapping[str, str] = "linear",
        cosine_nu: float | Mapping[str, float] = 1.0,
        prior_std: float = 1.0,
        align: bool = True,
    ) -> None:
        kinds = {m: schedule for m in MODALITIES} if isinstance(schedule, str) else dict(schedule)
        nus = {m: cosine_nu for m in MODALITIES} if isinstance(cosine_nu, (int, float)) else dict(cosine_nu)
        missing = [m for m in MODALITIES if m not in kinds or m not in nus]
        if missing:
            raise ValueError(f"schedule and cosine_nu need an entry for each of x, a, c, e; missing {missing}")
        self.schedules: dict[str, Schedule] = {m: make_schedule(kinds[m], nus[m]) for m in MODALITIES}
        self.masks = {
            "a": MaskedFlow(num_atom_types),
            "c": MaskedFlow(num_charges),
            "e": MaskedFlow(num_bond_types),
        }
        self.prior_std = prior_std
        self.align = align

    def alphas(self, t: Tensor) -> dict[str, Tensor]:
        """``α_m(t)`` of every modality."""
        return {m: s.alpha(t) for m, s in self.schedules.items()}

    def prior_positions(self, batch: Tensor, generator: torch.Generator | None = None, dtype=None) -> Tensor:
        """Centred Gaussian positions ``[N, 3]``."""
        return centered_gaussian(batch, self.prior_std, generator, dtype)

    def corrupt(
        self,
        clean: MoleculeState,
        batch: Tensor,
        pair_batch: Tensor,
        t: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[MoleculeState, MoleculeState]:
        """Sample ``g_t`` on the conditional paths from a fresh prior to ``clean``.

        Returns the centred clean molecule (the regression target) and the noisy one, which carries
        ``clean.pairs``, ``batch`` and ``t``: the vector field's input.

        Shapes:
            clean: positions ``[N, 3]``, tokens ``[N]`` / ``[P]``; batch ``[N]``; pair_batch ``[P]``;
            t ``[B]``.
        """
        x1 = center(clean.pos, batch)
        x0 = self.prior_positions(batch, generator, x1.dtype)
        if self.align:
            x0 = align_prior(x0, x1, batch)
        alpha = self.alphas(t)
        noisy = MoleculeState(
            interpolate(x0, x1, alpha["x"][batch]),
            self.masks["a"].corrupt(clean.atom_type, alpha["a"][batch], generator),
            self.masks["c"].corrupt(clean.charge, alpha["c"][batch], generator),
            self.masks["e"].corrupt(clean.bond_type, alpha["e"][pair_batch], generator),
            clean.pairs,
            batch,
            t,
        )
        return clean._replace(pos=x1), noisy

    def losses(self, pred, target: MoleculeState, noisy: MoleculeState) -> dict[str, Tensor]:
        """MSE of positions and masked-token cross-entropies, keyed ``x, a, c, e``.

        Args:
            pred: a :class:`~geomol.models.propmolflow.FieldOutput` (positions and logits).
            target: the centred clean molecule.
            noisy: the noisy molecule the prediction was made from.
        """
        return {
            "x": F.mse_loss(pred.pos, target.pos),
            "a": self.masks["a"].loss(pred.atom_logits, target.atom_type, noisy.atom_type),
            "c": self.masks["c"].loss(pred.charge_logits, target.charge, noisy.charge),
            "e": self.masks["e"].loss(pred.bond_logits, target.bond_type, noisy.bond_type),
        }

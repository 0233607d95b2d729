"""Property conditioning of the vector field (PropMolFlow, Zeng et al. 2025, Sec. 2.2).

Standardised target properties ``p [B, P]`` are embedded once per molecule (optionally through a
Gaussian expansion of each property, as in cG-SchNet) and combined with the node scalars ``h`` right
after the input embedding, with one of five methods:

====================== ==========================================
``concatenate``        ``h ← φ([h ‖ p])``
``sum``                ``h ← h + p``
``multiply``           ``h ← h ⊙ (σ(p) + ½)``
``concatenate_sum``    ``h ← h + φ([h ‖ p])``
``concatenate_multiply`` ``h ← h ⊙ (σ(φ([h ‖ p])) + ½)``
====================== ==========================================

``φ`` is a two-layer MLP. Molecules marked ``unconditional`` skip the injection (``h`` passes through
unchanged): the null condition of classifier-free guidance (Ho & Salimans 2022), trained by dropping the
condition of a fraction of the training molecules (``GenerationTask(condition_dropout=…)``). The gates of the multiplicative methods lie in ``(½, 3⁄2)``, so a property
rescales but never switches off a channel. In ``concatenate_multiply`` the gate comes from
``φ([h ‖ p])`` as the method's name says (the authors' code computes ``φ([h ‖ p])`` and then
overwrites it with ``σ(p) + ½``, which makes it the same as ``multiply``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geomol.nn.radial import GaussianBasis

__all__ = ["METHODS", "PropertyEmbedding", "PropertyConditioning"]

METHODS = ("concatenate", "sum", "multiply", "concatenate_sum", "concatenate_multiply")


class PropertyEmbedding(nn.Module):
    """Several standardised properties -> one vector per molecule.

    Args:
        num_properties: ``P``.
        dim: embedding size.
        gaussian_expansion: expand each property on ``n_gaussians`` Gaussians first.
        n_gaussians: number of Gaussians per property.
        expansion_start, expansion_stop: centres of the first and last Gaussian, in standard
            deviations of the property (the width is the spacing of the centres).

    Shapes:
        p ``[B, P]`` -> ``[B, dim]``
    """

    def __init__(
        self,
        num_properties: int,
        dim: int,
        gaussian_expansion: bool = False,
        n_gaussians: int = 5,
        expansion_start: float = -3.0,
        expansion_stop: float = 3.0,
    ) -> None:
        super().__init__()
        if num_properties < 1:
            raise ValueError(f"a property embedding needs at least one property, got {num_properties}")
        self.num_properties = num_properties
        self.expansion = GaussianBasis(expansion_start, expansion_stop, n_gaussians) if gaussian_expansion else None
        width = n_gaussians if gaussian_expansion else 1
        self.mlp = nn.Sequential(
            nn.Linear(num_properties * width, dim), nn.SiLU(), nn.Linear(dim, dim), nn.LayerNorm(dim)
        )

    def forward(self, p: Tensor) -> Tensor:
        if p.dim() != 2 or p.size(1) != self.num_properties:
            raise ValueError(f"expected properties of shape [B, {self.num_properties}], got {tuple(p.shape)}")
        if self.expansion is not None:
            p = self.expansion(p).flatten(1)  # [B, P * n_gaussians]
        return self.mlp(p)


class PropertyConditioning(nn.Module):
    """Injects embedded properties into node scalars with one of :data:`METHODS`.

    Args:
        num_properties: number of conditioning properties ``P``.
        scalars: node scalar channels (also the embedding size).
        method: one of :data:`METHODS`.
        gaussian_expansion, n_gaussians, expansion_start, expansion_stop: see
            :class:`PropertyEmbedding`.

    Shapes:
        h ``[N, scalars]``, p ``[B, P]``, batch ``[N]``, unconditional ``[B]`` (bool, optional: these
        molecules keep ``h`` unchanged) -> ``[N, scalars]``
    """

    def __init__(
        self,
        num_properties: int,
        scalars: int,
        method: str = "concatenate_sum",
        gaussian_expansion: bool = False,
        n_gaussians: int = 5,
        expansion_start: float = -3.0,
        expansion_stop: float = 3.0,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown conditioning method {method!r}; use one of {', '.join(METHODS)}")
        self.method = method
        self.embedding = PropertyEmbedding(
            num_properties, scalars, gaussian_expansion, n_gaussians, expansion_start, expansion_stop
        )
        self.phi = (
            nn.Sequential(nn.Linear(2 * scalars, scalars), nn.SiLU(), nn.Linear(scalars, scalars))
            if method.startswith("concatenate")
            else None
        )

    def forward(self, h: Tensor, p: Tensor, batch: Tensor, unconditional: Tensor | None = None) -> Tensor:
        out = self._inject(h, self.embedding(p)[batch])
        if unconditional is None:
            return out
        return torch.where(unconditional[batch].unsqueeze(-1), h, out)

    def _inject(self, h: Tensor, emb: Tensor) -> Tensor:
        if self.method == "sum":
            return h + emb
        if self.method == "multiply":
            return h * (emb.sigmoid() + 0.5)
        mixed = self.phi(torch.cat([h, emb], dim=-1))
        if self.method == "concatenate":
            return mixed
        if self.method == "concatenate_sum":
            return h + mixed
        return h * (mixed.sigmoid() + 0.5)

    def extra_repr(self) -> str:
        return f"method={self.method!r}"

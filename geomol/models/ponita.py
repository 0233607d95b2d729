"""PONITA networks (Bekkers et al., ICLR 2024) built from :mod:`geomol.nn.ponita`.

* :class:`PonitaNet`: per-node network, scalars and vectors in, scalars and vectors out.
* :class:`Ponita`: property model ``forward(z, pos, batch) -> [num_graphs, out_channels]`` for
  :class:`geomol.tasks.property.PropertyTask` (QM9 targets, rMD17 energies with forces as −∂E/∂pos).
* :class:`PonitaDynamics`: the N-body model, positions after a time step from positions,
  velocities and charges.

``num_ori`` chooses the space the features live on (:func:`~geomol.nn.ponita.ponita_space`), which lifts
the node inputs onto it and reads the outputs back:

* ``0``: :class:`~geomol.nn.ponita.PositionSpace`, R³ (the paper's PNITA): points carry plain features,
  pairs are described by their distance.
* ``-1``: :class:`~geomol.nn.ponita.EdgeLiftedSpace`, edge-lifted R³×S²: every edge ``j → i`` of the
  graph built with ``lift_radius`` becomes a point on atom ``i`` oriented towards ``j`` (the paper's QM9
  model, which lifts covalent bonds); pairs of such points are described by
  :func:`~geomol.nn.ponita.point_invariants`.
* ``> 0``: :class:`~geomol.nn.ponita.FiberBundleSpace`, the fiber bundle R³ × grid of ``num_ori``
  orientations with the separable convolution.

Equivariance: modes ``0`` and ``-1`` are exactly E(3)-invariant (scalars) and equivariant
(vectors). With a grid the model is exactly equivariant under rotations that map the grid onto
itself and approximately under all others; the error shrinks as the grid gets finer. Like the
paper's random-rotation augmentation, training mode rotates the grid at random in every forward
(``rotate_grid``), which is the same as rotating the input since everything else is invariant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import scatter

from geomol.nn.ponita import (
    ConvNextBlock,
    KernelBasis,
    PonitaSpace,
    distance_invariants,
    interaction_graph,
    ponita_space,
)
from geomol.nn.radial import PolynomialEnvelope

__all__ = ["PonitaNet", "Ponita", "PonitaDynamics"]


class PonitaNet(nn.Module):
    """PONITA on a point cloud: node scalars and vectors in, node scalars and vectors out.

    ``num_ori`` picks the space (``self.space``) that lifts the inputs and reads the outputs out; the
    network itself is the same on all three: a shared kernel basis of the space's invariants, an
    embedding, ConvNeXt blocks of the space's convolution and averaged linear readouts.

    Args:
        scalar_in: scalar input channels per node.
        vector_in: vector input channels per node (need ``num_ori != 0``).
        scalar_out: scalar output channels per node.
        vector_out: vector output channels per node (need ``num_ori != 0``).
        hidden_channels: feature channels.
        num_layers: ConvNeXt blocks.
        num_ori: ``0`` for R³, ``-1`` for edge-lifted R³×S², ``> 0`` for a grid of that many orientations.
        radius: interaction cutoff in Å; ``None`` connects every pair in a graph. Kernels are
            multiplied by DimeNet's polynomial envelope (p = 6) of ``d / radius`` so they vanish
            smoothly at the cutoff.
        lift_radius: cutoff of the graph whose edges become orientations when ``num_ori = -1``
            (about 1.7 Å picks the covalent bonds of organic molecules); ``None`` uses ``radius``.
            An atom with no neighbour within it has no orientation and adds nothing to the readout.
        basis_dim: size of the shared kernel basis (default ``hidden_channels``).
        degree: degree of the polynomial features of the invariants.
        widening_factor: MLP width of the ConvNeXt blocks relative to ``hidden_channels``.
        layer_scale: initial ConvNeXt layer scale; ``None`` (or 0) for none.
        multiple_readouts: average readouts after every layer (else read out the last layer only).
        grid: ``"repulsion"`` or ``"fibonacci"`` (``num_ori > 0``).
        grid_seed: seed of the repulsion grid.
        complete_invariants: add the fourth invariant that makes the R³×S² set complete
            (Bellaard et al. 2025); applies to ``num_ori = -1``, where points on both ends of a pair
            have their own orientation.
        rotate_grid: in training mode, rotate the grid at random in every forward.
        max_num_neighbors: neighbours kept per node by the radius graphs (``None``: all).
        calibrate: rescale each convolution's kernels on the first training batch so it starts
            variance-preserving (the authors' ``callibrate``; on in the paper configs).

    Shapes:
        pos ``[N, 3]``, batch ``[N]``, scalars ``[N, scalar_in]``, vectors ``[N, vector_in, 3]``
        -> (``[N, scalar_out]``, ``[N, vector_out, 3]``)
    """

    def __init__(
        self,
        scalar_in: int,
        vector_in: int = 0,
        scalar_out: int = 1,
        vector_out: int = 0,
        hidden_channels: int = 128,
        num_layers: int = 5,
        num_ori: int = 20,
        radius: float | None = None,
        lift_radius: float | None = None,
        basis_dim: int | None = None,
        degree: int = 3,
        widening_factor: int = 4,
        layer_scale: float | None = None,
        multiple_readouts: bool = True,
        grid: str = "repulsion",
        grid_seed: int = 0,
        complete_invariants: bool = False,
        rotate_grid: bool = True,
        max_num_neighbors: int | None = None,
        calibrate: bool = False,
    ) -> None:
        super().__init__()
        self.space: PonitaSpace = ponita_space(
            num_ori,
            lift_radius=radius if lift_radius is None else lift_radius,
            max_num_neighbors=max_num_neighbors,
            complete_invariants=complete_invariants,
            grid=grid,
            grid_seed=grid_seed,
            rotate_grid=rotate_grid,
        )
        if not self.space.has_orientations and (vector_in or vector_out):
            raise ValueError("vector inputs or outputs need orientations: use num_ori=-1 or num_ori > 0, not 0")
        if scalar_out + vector_out < 1:
            raise ValueError("PonitaNet needs at least one scalar or vector output channel")
        self.scalar_in, self.vector_in = scalar_in, vector_in
        self.scalar_out, self.vector_out = scalar_out, vector_out
        self.radius = radius
        self.max_num_neighbors = max_num_neighbors
        basis_dim = hidden_channels if basis_dim is None else basis_dim

        self.envelope = PolynomialEnvelope(exponent=5) if radius is not None else None
        # The grid (None off the fiber bundle) and the kernel bases stay here, under their state-dict keys.
        self.register_buffer("grid", self.space.make_grid(torch.get_default_dtype()))
        spatial_invariants, *fiber_invariants = self.space.basis_invariants
        self.basis = KernelBasis(spatial_invariants, hidden_channels, basis_dim, degree)
        self.fiber_basis = (
            KernelBasis(*fiber_invariants, hidden_channels, basis_dim, degree) if fiber_invariants else None
        )

        self.embed = nn.Linear(scalar_in + vector_in, hidden_channels, bias=False)
        self.layers = nn.ModuleList()
        self.readouts = nn.ModuleList()
        for i in range(num_layers):
            conv = self.space.conv(hidden_channels, basis_dim, calibrate)
            self.layers.append(ConvNextBlock(hidden_channels, conv, widening_factor, layer_scale))
            if multiple_readouts or i == num_layers - 1:
                self.readouts.append(nn.Linear(hidden_channels, scalar_out + vector_out))
            else:
                self.readouts.append(None)

    def forward(
        self, pos: Tensor, batch: Tensor, scalars: Tensor, vectors: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        num_nodes = pos.size(0)
        if scalars.shape != (num_nodes, self.scalar_in):
            raise ValueError(f"scalars must have shape [{num_nodes}, {self.scalar_in}], got {tuple(scalars.shape)}")
        if self.vector_in and (vectors is None or vectors.shape != (num_nodes, self.vector_in, 3)):
            got = None if vectors is None else tuple(vectors.shape)
            raise ValueError(f"vectors must have shape [{num_nodes}, {self.vector_in}, 3], got {got}")
        edge_index = interaction_graph(pos, batch, self.radius, loop=True, max_num_neighbors=self.max_num_neighbors)
        lifted = self.space.lift(pos, batch, edge_index, scalars, vectors if self.vector_in else None, self.grid)
        kernel_bases = (self.basis, self.fiber_basis)[: len(lifted.invariants)]
        bases = [basis(invariants) for basis, invariants in zip(kernel_bases, lifted.invariants)]
        if self.envelope is not None:
            # The cutoff window of a pair (of atoms, or of points lifted from them) acts on the spatial basis.
            window = self.envelope(distance_invariants(lifted.positions, lifted.edge_index).squeeze(-1) / self.radius)
            bases[0] = bases[0] * window.view(-1, *(1,) * (bases[0].dim() - 1))

        x = self.embed(lifted.features)  # [N, C], [M, C] or [N, O, C]
        readouts = []
        for layer, readout in zip(self.layers, self.readouts):
            x = layer(x, lifted.edge_index, *bases)
            if readout is not None:
                readouts.append(readout(x))
        out = torch.stack(readouts).mean(0)
        out_scalar, out_vector = out.split([self.scalar_out, self.vector_out], dim=-1)
        return self.space.readout(out_scalar, out_vector, lifted)


class Ponita(nn.Module):
    """PONITA property model: one-hot atom types → :class:`PonitaNet` → sum (or mean) over atoms.

    The task standardizes targets and computes forces as ``-∂E/∂pos``; this model is smooth in
    ``pos`` (the graph's indices carry no gradient).

    Args:
        out_channels: number of targets (the task passes it).
        num_elements: atomic numbers must be below this; they enter one-hot, as in the paper.
        readout: ``"sum"`` (extensive targets such as energies, the paper's choice) or ``"mean"`` over atoms.
        **kwargs: hyper-parameters of :class:`PonitaNet` (``hidden_channels``, ``num_ori``, ...).

    Shapes:
        z ``[N]``, pos ``[N, 3]``, batch ``[N]`` -> ``[num_graphs, out_channels]``
    """

    def __init__(self, out_channels: int, num_elements: int = 100, readout: str = "sum", **kwargs) -> None:
        super().__init__()
        if readout not in ("sum", "mean"):
            raise ValueError(f"readout must be 'sum' or 'mean', got {readout!r}")
        self.num_elements, self.readout = num_elements, readout
        self.net = PonitaNet(scalar_in=num_elements, vector_in=0, scalar_out=out_channels, vector_out=0, **kwargs)

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor) -> Tensor:
        if z.numel() and (int(z.min()) < 0 or int(z.max()) >= self.num_elements):
            raise ValueError(f"atomic numbers must lie in [0, {self.num_elements}), got {z.min()}..{z.max()}")
        scalars = F.one_hot(z, self.num_elements).to(pos.dtype)
        per_atom, _ = self.net(pos, batch, scalars)
        return scatter(per_atom, batch, dim=0, dim_size=int(batch.max()) + 1, reduce=self.readout)


class PonitaDynamics(nn.Module):
    """PONITA for the charged N-body task: ``pos + Σ_o f(o) o`` from positions, velocities and charges.

    Charges enter as scalars, velocities as the vector ``v`` (``o ↦ v·o`` on the grid); the one
    vector output is the displacement, as in the paper's N-body model.

    Args:
        **kwargs: hyper-parameters of :class:`PonitaNet` (``num_ori`` must not be 0).

    Shapes:
        pos ``[N, 3]``, vel ``[N, 3]``, charge ``[N]`` or ``[N, 1]``, batch ``[N]`` -> ``[N, 3]``
    """

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.net = PonitaNet(scalar_in=1, vector_in=1, scalar_out=0, vector_out=1, **kwargs)

    def forward(self, pos: Tensor, vel: Tensor, charge: Tensor, batch: Tensor) -> Tensor:
        charge = charge.reshape(-1, 1).to(pos.dtype)
        _, displacement = self.net(pos, batch, charge, vel.unsqueeze(1))
        return pos + displacement[:, 0]

"""PONITA networks (Bekkers et al., ICLR 2024) built from :mod:`geomol.nn.ponita`.

* :class:`PonitaNet`: per-node network, scalars and vectors in, scalars and vectors out.
* :class:`Ponita`: property model ``forward(z, pos, batch) -> [num_graphs, out_channels]`` for
  :class:`geomol.tasks.property.PropertyTask` (QM9 targets, rMD17 energies with forces as −∂E/∂pos).
* :class:`PonitaDynamics`: the N-body model, positions after a time step from positions,
  velocities and charges.

``num_ori`` chooses the space the features live on:

* ``0``: R³ (the paper's PNITA): points carry plain features, pairs are described by their distance.
* ``-1``: edge-lifted R³×S²: every edge ``j → i`` of the graph built with ``lift_radius`` becomes a
  point on atom ``i`` oriented towards ``j`` (the paper's QM9 model, which lifts covalent bonds);
  pairs of such points are described by :func:`~geomol.nn.ponita.point_invariants`.
* ``> 0``: the fiber bundle R³ × grid of ``num_ori`` orientations with the separable convolution.

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

from geomol.nn.graph import full_graph, radius_graph
from geomol.nn.ponita import (
    ConvNextBlock,
    FiberBundleConv,
    KernelBasis,
    PointConv,
    distance_invariants,
    fiber_bundle_invariants,
    lift_to_edges,
    lifted_graph,
    point_invariants,
    random_rotation_matrix,
    scalar_to_sphere,
    sphere_to_scalar,
    sphere_to_vector,
    spherical_grid,
    vector_to_sphere,
)
from geomol.nn.radial import PolynomialEnvelope

__all__ = ["PonitaNet", "Ponita", "PonitaDynamics"]


class PonitaNet(nn.Module):
    """PONITA on a point cloud: node scalars and vectors in, node scalars and vectors out.

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
        if num_ori < -1:
            raise ValueError(f"num_ori must be 0 (R³), -1 (edge-lifted) or a positive grid size, got {num_ori}")
        if num_ori == 0 and (vector_in or vector_out):
            raise ValueError("vector inputs or outputs need orientations: use num_ori=-1 or num_ori > 0, not 0")
        if complete_invariants and num_ori != -1:
            raise ValueError(
                "complete_invariants needs pairs with two orientations, which only num_ori=-1 has "
                "(the separable grid convolution pairs each orientation with itself)"
            )
        if scalar_out + vector_out < 1:
            raise ValueError("PonitaNet needs at least one scalar or vector output channel")
        self.scalar_in, self.vector_in = scalar_in, vector_in
        self.scalar_out, self.vector_out = scalar_out, vector_out
        self.num_ori = num_ori
        self.radius = radius
        self.lift_radius = radius if lift_radius is None else lift_radius
        self.rotate_grid = rotate_grid
        self.complete_invariants = complete_invariants
        self.max_num_neighbors = max_num_neighbors
        basis_dim = hidden_channels if basis_dim is None else basis_dim

        self.envelope = PolynomialEnvelope(exponent=5) if radius is not None else None
        if num_ori > 0:
            self.register_buffer("grid", spherical_grid(num_ori, grid, grid_seed, dtype=torch.get_default_dtype()))
            self.basis = KernelBasis(2, hidden_channels, basis_dim, degree)
            self.fiber_basis = KernelBasis(1, hidden_channels, basis_dim, degree)
        else:
            self.register_buffer("grid", None)
            num_invariants = 1 if num_ori == 0 else (4 if complete_invariants else 3)
            self.basis = KernelBasis(num_invariants, hidden_channels, basis_dim, degree)
            self.fiber_basis = None

        self.embed = nn.Linear(scalar_in + vector_in, hidden_channels, bias=False)
        self.layers = nn.ModuleList()
        self.readouts = nn.ModuleList()
        for i in range(num_layers):
            conv = (
                FiberBundleConv(hidden_channels, basis_dim, calibrate)
                if num_ori > 0
                else PointConv(hidden_channels, basis_dim, calibrate)
            )
            self.layers.append(ConvNextBlock(hidden_channels, conv, widening_factor, layer_scale))
            if multiple_readouts or i == num_layers - 1:
                self.readouts.append(nn.Linear(hidden_channels, scalar_out + vector_out))
            else:
                self.readouts.append(None)

    def _graph(self, pos: Tensor, batch: Tensor, radius: float | None, loop: bool) -> Tensor:
        if radius is None:
            return full_graph(batch, loop=loop)
        return radius_graph(pos, radius, batch, loop=loop, max_num_neighbors=self.max_num_neighbors)

    def _window(self, dist: Tensor) -> Tensor | None:
        return None if self.envelope is None else self.envelope(dist / self.radius)

    def _current_grid(self, pos: Tensor) -> Tensor:
        grid = self.grid.to(pos.dtype)
        if self.training and self.rotate_grid:
            grid = grid @ random_rotation_matrix(pos.dtype, pos.device).T
        return grid

    def forward(
        self, pos: Tensor, batch: Tensor, scalars: Tensor, vectors: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        num_nodes = pos.size(0)
        if scalars.shape != (num_nodes, self.scalar_in):
            raise ValueError(f"scalars must have shape [{num_nodes}, {self.scalar_in}], got {tuple(scalars.shape)}")
        if self.vector_in and (vectors is None or vectors.shape != (num_nodes, self.vector_in, 3)):
            got = None if vectors is None else tuple(vectors.shape)
            raise ValueError(f"vectors must have shape [{num_nodes}, {self.vector_in}, 3], got {got}")
        edge_index = self._graph(pos, batch, self.radius, loop=True)
        dist = distance_invariants(pos, edge_index).squeeze(-1)  # [E]
        window = self._window(dist)

        if self.num_ori > 0:
            grid = self._current_grid(pos)  # [O, 3]
            spatial, fiber = fiber_bundle_invariants(pos, grid, edge_index)
            basis = self.basis(spatial)  # [E, O, B]
            if window is not None:
                basis = basis * window[:, None, None]
            bases = (basis, self.fiber_basis(fiber))
            inputs = [scalar_to_sphere(scalars, self.num_ori)]
            if self.vector_in:
                inputs.append(vector_to_sphere(vectors, grid))
        elif self.num_ori == -1:
            base, ori = lift_to_edges(pos, self._graph(pos, batch, self.lift_radius, loop=False))  # [M], [M, 3]
            lifted_edges = lifted_graph(edge_index, base, num_nodes)
            invariants = point_invariants(pos[base], ori, lifted_edges, complete=self.complete_invariants)
            basis = self.basis(invariants)  # [E', B]
            if window is not None:
                # The window of a lifted pair is that of its two atoms.
                basis = basis * self._window(distance_invariants(pos[base], lifted_edges).squeeze(-1)).unsqueeze(-1)
            bases = (basis,)
            edge_index = lifted_edges
            inputs = [scalars[base]]
            if self.vector_in:
                inputs.append((vectors[base] * ori.unsqueeze(1)).sum(-1))
        else:
            basis = self.basis(dist.unsqueeze(-1))  # [E, B]
            if window is not None:
                basis = basis * window.unsqueeze(-1)
            bases = (basis,)
            inputs = [scalars]

        x = self.embed(torch.cat(inputs, dim=-1))  # [N, O, C] or [M, C]
        readouts = []
        for layer, readout in zip(self.layers, self.readouts):
            x = layer(x, edge_index, *bases)
            if readout is not None:
                readouts.append(readout(x))
        out = torch.stack(readouts).mean(0)
        out_scalar, out_vector = out.split([self.scalar_out, self.vector_out], dim=-1)

        if self.num_ori > 0:
            scalar = sphere_to_scalar(out_scalar)
            vector = sphere_to_vector(out_vector, grid) if self.vector_out else None
        elif self.num_ori == -1:
            # Points on one atom are samples of its spherical signal: average them like the grid readout.
            scalar = scatter(out_scalar, base, dim=0, dim_size=num_nodes, reduce="mean")
            vector = None
            if self.vector_out:
                vector = scatter(
                    out_vector.unsqueeze(-1) * ori.unsqueeze(1), base, 0, dim_size=num_nodes, reduce="mean"
                )
        else:
            scalar, vector = out_scalar, None
        return scalar, vector


class Ponita(nn.Module):
    """PONITA property model: one-hot atom types → :class:`PonitaNet` → sum (or mean) over atoms.

    The task standardizes targets and computes forces as ``-∂E/∂pos``; this model is smooth in
    ``pos`` (the graph's indices carry no gradient).

    Args:
        out_channels: number of targets (the task passes it).
        num_elements: atomic numbers must be below this; they enter one-hot, as in the paper.
        reduce: ``"sum"`` (extensive targets such as energies, the paper's choice) or ``"mean"``.
        **kwargs: hyper-parameters of :class:`PonitaNet` (``hidden_channels``, ``num_ori``, ...).

    Shapes:
        z ``[N]``, pos ``[N, 3]``, batch ``[N]`` -> ``[num_graphs, out_channels]``
    """

    def __init__(self, out_channels: int, num_elements: int = 100, reduce: str = "sum", **kwargs) -> None:
        super().__init__()
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        self.num_elements, self.reduce = num_elements, reduce
        self.net = PonitaNet(scalar_in=num_elements, vector_in=0, scalar_out=out_channels, vector_out=0, **kwargs)

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor) -> Tensor:
        if z.numel() and (int(z.min()) < 0 or int(z.max()) >= self.num_elements):
            raise ValueError(f"atomic numbers must lie in [0, {self.num_elements}), got {z.min()}..{z.max()}")
        scalars = F.one_hot(z, self.num_elements).to(pos.dtype)
        per_atom, _ = self.net(pos, batch, scalars)
        return scatter(per_atom, batch, dim=0, dim_size=int(batch.max()) + 1, reduce=self.reduce)


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

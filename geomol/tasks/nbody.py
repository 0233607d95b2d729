"""NBodyTask: predict particle positions after a fixed time from positions, velocities and charges."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from .base import GeomolTask, build_network, plain_config

__all__ = ["NBodyTask"]


class NBodyTask(GeomolTask):
    """Regress future positions with a mean squared error (EGNN/SEGNN/PONITA's N-body protocol).

    The network maps ``(pos, vel, charge, batch)`` to predicted positions ``[N, 3]``, e.g.
    :class:`geomol.models.ponita.PonitaDynamics`. Logged: ``{train,val,test}/loss`` (the MSE per
    coordinate, the benchmark's metric).

    Args:
        net: config of the network (``_target_`` plus arguments).
        **optimization: ``optimizer``, ``scheduler``, ``scheduler_interval``, ``monitor``
            (:class:`~geomol.tasks.base.GeomolTask`).
    """

    def __init__(self, net: Mapping, **optimization) -> None:
        super().__init__(**optimization)
        net = plain_config(net)
        self.save_hyperparameters()
        self.net = build_network(net)

    def forward(self, pos: Tensor, vel: Tensor, charge: Tensor, batch: Tensor) -> Tensor:
        """Predicted positions.

        Shapes:
            pos ``[N, 3]``, vel ``[N, 3]``, charge ``[N, 1]``, batch ``[N]`` -> ``[N, 3]``
        """
        return self.net(pos, vel, charge, batch)

    def _step(self, batch, stage: str) -> Tensor:
        pred = self(batch.pos, batch.vel, batch.charge, batch.batch)
        loss = (pred - batch.y).pow(2).mean()
        self.log(f"{stage}/loss", loss.detach(), batch_size=batch.num_graphs, prog_bar=stage != "test")
        return loss

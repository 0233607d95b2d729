"""Euler sampler of the molecular flow and the distribution of molecule sizes it starts from.

From ``t = 0`` (Gaussian positions, every token masked) to ``t = 1`` in ``steps`` equal steps: the
field predicts the clean molecule, positions take an Euler step towards it (FlowMol, Eq. 9) and the
tokens take a CTMC step with stochasticity ``η`` and a temperature on the predicted probabilities
(FlowMol's sampler, Sec. 3.2). The number of atoms of each molecule is fixed from the start: given,
drawn from the training distribution, or drawn from training molecules whose property lies at the
same percentile as the requested value.

With ``guidance = w ≠ 1`` (classifier-free guidance, Ho & Salimans 2022, on the endpoint prediction) the
field runs twice per step, with and without the condition, and the step follows
``x̂ = x̂_∅ + w (x̂_c − x̂_∅)`` for the positions and the same combination of the logits (a product of
experts ``p_∅^{1−w} p_c^w`` for the tokens); ``w > 1`` pushes molecules further towards the requested
property. The field must have learned the null condition (``GenerationTask(condition_dropout > 0)``).
``guidance_interval = (t_lo, t_hi)`` guides only the steps that start in ``[t_lo, t_hi)`` and takes plain
conditional steps elsewhere (guidance in a limited interval, Kynkäänniemi et al. 2024): the last steps, which
settle bonds and valences, can then follow the conditional field alone. ``guidance_interval`` may also be a
mapping from variable to interval, e.g. ``{"e": (0, 0.5)}``: the bonds are guided in the first half only, the
variables it does not name in every step. ``guidance`` may be a mapping too, e.g. ``{"x": 2, "a": 2, "c": 2,
"e": 1.5}``: each variable's own weight (the variables it does not name: 1, the conditional field alone).

At a low temperature the guided logits ``l_∅ + w (l_c − l_∅)`` pick the class that the conditional field favours
*most relative to the unconditional one*, which can be a class the conditional field itself finds unlikely (a rare
bond order both experts doubt, the unconditional one more). ``guidance_plausibility = ρ > 0`` keeps only the classes
whose conditional probability is at least ``ρ`` times that of the conditional field's most likely class before the
guided draw (the adaptive plausibility constraint of contrastive decoding, Li et al. 2023, Eq. 3; ρ = 0.1 there):
guidance then re-ranks what the conditional field finds plausible and never invents the rest.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from geomol.devices import reuse_freed_memory, warn_slow_bf16
from geomol.flows.bonds import upper_pairs
from geomol.flows.interpolants import position_step
from geomol.flows.molecule import MODALITIES, MolecularFlow, MoleculeState
from geomol.flows.priors import center

__all__ = [
    "AtomCounts",
    "euler_sample",
    "split_molecules",
    "check_guidance",
    "check_guidance_on",
    "check_guidance_interval",
    "check_guidance_plausibility",
]


class AtomCounts:
    """Distribution of the number of atoms, optionally conditioned on property percentiles.

    Args:
        counts: ``counts[n]`` training molecules have ``n`` atoms (see
            :func:`geomol.data.generation.atom_count_statistics`).
        given_property: for each property name, ``{"edges": [...], "counts": [[...], ...]}``: the
            inner bin edges of its percentile bins (raw units, increasing) and, for each bin, the
            atom-count histogram of the training molecules in it.

    With several properties the conditionals are combined as independent evidence,
    ``p(n | p_1, p_2) ∝ p(n | p_1) p(n | p_2) / p(n)``.
    """

    def __init__(self, counts: Sequence[int], given_property: Mapping[str, Mapping] | None = None) -> None:
        self.counts = torch.as_tensor(counts, dtype=torch.float64)
        if self.counts.dim() != 1 or self.counts.sum() <= 0 or bool((self.counts < 0).any()):
            raise ValueError("counts must be a non-empty histogram of non-negative numbers with a positive total")
        self.given_property = {
            name: (
                torch.as_tensor(table["edges"], dtype=torch.float64),
                torch.as_tensor(table["counts"], dtype=torch.float64),
            )
            for name, table in (given_property or {}).items()
        }
        for name, (edges, table) in self.given_property.items():
            if table.shape != (edges.numel() + 1, self.counts.numel()):
                raise ValueError(
                    f"atom counts given {name!r} must have shape [{edges.numel() + 1}, {self.counts.numel()}], "
                    f"got {tuple(table.shape)}"
                )

    def probabilities(self, condition: Mapping[str, float] | None = None) -> Tensor:
        """``p(n)``, or ``p(n | properties)`` for raw property values ``{name: value}``.

        Shapes:
            -> ``[max_atoms + 1]``
        """
        marginal = self.counts / self.counts.sum()
        if not condition:
            return marginal
        unknown = [name for name in condition if name not in self.given_property]
        if unknown:
            raise ValueError(f"no atom-count statistics for {unknown}; known: {sorted(self.given_property)}")
        log_p = torch.zeros_like(marginal)
        for name, value in condition.items():
            edges, table = self.given_property[name]
            row = table[int(torch.bucketize(torch.tensor(float(value), dtype=torch.float64), edges))]
            conditional = (row + 1e-3 * marginal) / (row.sum() + 1e-3)  # a trace of p(n) keeps empty bins usable
            log_p = log_p + conditional.log() - marginal.clamp_min(1e-300).log()
        log_p = log_p + marginal.clamp_min(1e-300).log()
        p = torch.where(marginal > 0, log_p.exp(), torch.zeros_like(log_p))
        return p / p.sum()

    def sample(
        self,
        num: int,
        condition: Mapping[str, float] | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``num`` molecule sizes ``[num]`` (long)."""
        p = self.probabilities(condition).float()
        return torch.multinomial(p, num, replacement=True, generator=generator)


@torch.no_grad()
def _precision(precision: str, device: torch.device):
    if precision == "bf16":
        warn_slow_bf16("sampling", device)
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def euler_sample(
    field: torch.nn.Module,
    flow: MolecularFlow,
    n_atoms: Tensor,
    condition: Tensor | None = None,
    steps: int = 100,
    eta: float = 10.0,
    temperature: float = 0.05,
    generator: torch.Generator | None = None,
    on_step: Callable[[], None] | None = None,
    precision: str = "32",
    guidance: float | Mapping[str, float] = 1.0,
    guidance_interval: Sequence[float] | Mapping[str, Sequence[float]] = (0.0, 1.0),
    guidance_on: Sequence[str] = MODALITIES,
    guidance_plausibility: float = 0.0,
) -> tuple[MoleculeState, Tensor, Tensor]:
    """Integrate the flow from the prior to molecules with the given numbers of atoms.

    Args:
        field: a vector field with the call signature of :class:`~geomol.models.propmolflow.PropMolFlow`,
            ``field(state, condition)`` with the state's pairs, batch and time set.
        flow: schedules and categorical flows.
        n_atoms: atoms of each molecule ``[B]`` (at least 1).
        condition: standardised properties ``[B, P]`` for a conditional field.
        steps: Euler steps.
        eta: CTMC stochasticity (re-masking rate).
        temperature: softmax temperature of the token draws (``< 1`` sharpens).
        generator: random generator on the field's device.
        on_step: called after every Euler step (progress bars).
        precision: ``"32"``, or ``"bf16"``: the field runs under bfloat16 autocast (its matrix products in
            bfloat16, as ``trainer.precision=bf16-mixed`` trains it); its outputs return to float32, so the
            integration, softmaxes and token draws do not change precision.
        guidance: classifier-free guidance weight ``w`` (1: the conditional field alone, 0: the
            unconditional one); needs ``condition`` and a field that takes ``unconditional=`` (see the
            module docstring); or a mapping from some of ``x``, ``a``, ``c``, ``e`` to their own weights (the
            others: 1).
        guidance_interval: ``(t_lo, t_hi)``, ``0 ≤ t_lo < t_hi ≤ 1``: the steps starting at ``t`` in
            ``[t_lo, t_hi)`` are guided, the others are not (``(0, 1)``: every step); or a mapping from some of
            ``x``, ``a``, ``c``, ``e`` to their own intervals (the others: every step).
        guidance_on: the variables the guidance mixes, a subset of ``x`` (positions), ``a`` (atom types),
            ``c`` (charges), ``e`` (bonds); the others follow the conditional field alone.
        guidance_plausibility: ``ρ`` in ``[0, 1)``: in guided steps a token may take only the classes whose
            conditional probability is at least ``ρ`` times the largest one (0: every class; see the module
            docstring).

    Returns:
        (molecule state at ``t = 1``, batch ``[N]``, pairs ``[2, P]``); no token is left in its mask state.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if precision not in ("32", "bf16"):
        raise ValueError(f"precision must be 32 or bf16, got {precision!r}")
    weights = check_guidance(guidance)
    intervals = check_guidance_interval(guidance_interval)
    guided_variables = {m for m in check_guidance_on(guidance_on) if weights[m] != 1.0}
    guided = bool(guided_variables)
    plausibility = check_guidance_plausibility(guidance_plausibility)
    if guided and condition is None:
        raise ValueError(f"guidance={guidance} needs a conditional field and a condition")
    n_atoms = torch.as_tensor(n_atoms, dtype=torch.long)
    if n_atoms.dim() != 1 or n_atoms.numel() == 0 or bool((n_atoms < 1).any()):
        raise ValueError("n_atoms must be a non-empty 1-D list of positive atom counts")
    param = next(field.parameters())
    device, dtype = param.device, param.dtype
    if device.type == "cpu":
        reuse_freed_memory()  # the same big tensors every step: no page faults on fresh memory
    batch = torch.repeat_interleave(torch.arange(n_atoms.numel(), device=device), n_atoms.to(device))
    pairs = upper_pairs(batch)
    num_graphs = n_atoms.numel()
    if condition is not None:
        condition = condition.to(device=device, dtype=dtype)
    times = torch.linspace(0, 1, steps + 1, dtype=torch.float64)

    def at(k: int) -> Tensor:  # [B], every molecule at time times[k]
        return torch.full((num_graphs,), float(times[k]), device=device, dtype=dtype)

    state = MoleculeState(
        flow.prior_positions(batch, generator, dtype),
        torch.full_like(batch, flow.masks["a"].mask_index),
        torch.full_like(batch, flow.masks["c"].mask_index),
        torch.full((pairs.size(1),), flow.masks["e"].mask_index, dtype=torch.long, device=device),
        pairs,
        batch,
        at(0),
    )
    alphas = flow.alphas(times)
    null = torch.ones(num_graphs, dtype=torch.bool, device=device) if guided else None
    for k in range(steps):
        dt = float(times[k + 1] - times[k])
        now = float(times[k])
        mixed = {m for m in guided_variables if intervals[m][0] <= now < intervals[m][1]}
        with _precision(precision, device):
            out = field(state, condition)
            free = field(state, condition, unconditional=null) if mixed else None
        if precision != "32":  # the integration, softmaxes and token draws stay float32
            out = _as(out, dtype)
            free = None if free is None else _as(free, dtype)
        if free is not None:
            out = type(out)(
                *(
                    _guided(m, c, f, weights[m], plausibility) if m in mixed else c
                    for m, c, f in zip(MODALITIES, out, free)
                )
            )
        a_t = {m: float(alphas[m][k]) for m in alphas}
        a_s = {m: float(alphas[m][k + 1]) for m in alphas}
        pos = position_step(state.pos, out.pos, a_t["x"], a_s["x"])
        step = dict(dt=dt, eta=eta, temperature=temperature, generator=generator)
        state = MoleculeState(
            center(pos, batch),
            flow.masks["a"].step(state.atom_type, out.atom_logits, a_t["a"], a_s["a"], **step),
            flow.masks["c"].step(state.charge, out.charge_logits, a_t["c"], a_s["c"], **step),
            flow.masks["e"].step(state.bond_type, out.bond_logits, a_t["e"], a_s["e"], **step),
            pairs,
            batch,
            at(k + 1),
        )
        if on_step is not None:
            on_step()
    return state, batch, pairs


def _guided(variable: str, conditional: Tensor, free: Tensor, weight: float, plausibility: float) -> Tensor:
    """One variable's guided prediction ``f + w (c − f)``; for the tokens, the classes less than ``plausibility``
    times as likely as the conditional field's favourite get a logit of −∞ (see the module docstring)."""
    guided = free + weight * (conditional - free)
    if variable == "x" or plausibility <= 0.0:
        return guided
    # log p_c(k) − log p_c(best) = l_c(k) − max l_c: the softmax's normaliser cancels
    implausible = conditional < conditional.amax(-1, keepdim=True) + math.log(plausibility)
    return guided.masked_fill(implausible, float("-inf"))


def check_guidance_plausibility(plausibility: float) -> float:
    """The plausibility threshold ``ρ`` as a float in ``[0, 1)``; a one-line error for anything else."""
    real = isinstance(plausibility, numbers.Real) and not isinstance(plausibility, bool)
    if not real or not 0.0 <= float(plausibility) < 1.0:
        raise ValueError(f"guidance_plausibility must be a number in [0, 1), got {plausibility!r}")
    return float(plausibility)


def check_guidance_on(guidance_on: Sequence[str]) -> frozenset[str]:
    """The guided variables as a set; a one-line error for an empty or unknown choice."""
    chosen = [guidance_on] if isinstance(guidance_on, str) else list(guidance_on)
    unknown = [m for m in chosen if m not in MODALITIES]
    if not chosen or unknown:
        raise ValueError(
            f"guidance_on must list some of {', '.join(MODALITIES)} (positions, atom types, charges, bonds), "
            f"got {chosen}"
        )
    return frozenset(chosen)


def _per_variable(value, default, what: str, to: str) -> tuple[dict, str]:
    """``value`` for every variable: one for all, or a mapping ``{variable: value}`` (unnamed variables:
    ``default``); and the suffix of each value's name in errors (``.{}``: the variable, for a mapping). A one-line
    error ("``what`` must map some of x, a, c, e to ``to``") for an empty mapping or an unknown name."""
    if not isinstance(value, Mapping):
        return dict.fromkeys(MODALITIES, value), ""
    if not value or any(m not in MODALITIES for m in value):
        raise ValueError(f"{what} must map some of {', '.join(MODALITIES)} to {to}, got {dict(value)}")
    return {m: value.get(m, default) for m in MODALITIES}, ".{}"


def check_guidance(guidance: float | Mapping[str, float]) -> dict[str, float]:
    """Each variable's guidance weight, finite and ``≥ 0``, from one weight for all or a mapping
    ``{variable: weight}`` (unnamed variables: 1); a one-line error for anything else."""
    chosen, suffix = _per_variable(guidance, 1.0, "guidance", "weights")
    out = {}
    for m, w in chosen.items():
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
            raise ValueError(f"guidance{suffix.format(m)} must be a finite number >= 0, got {w}")
        out[m] = float(w)
    return out


def check_guidance_interval(
    guidance_interval: Sequence[float] | Mapping[str, Sequence[float]],
) -> dict[str, tuple[float, float]]:
    """Each variable's guidance interval ``(t_lo, t_hi)``, ``0 ≤ t_lo < t_hi ≤ 1``, from one interval for all or
    a mapping ``{variable: interval}`` (unnamed variables: ``(0, 1)``); a one-line error for anything else."""
    chosen, suffix = _per_variable(guidance_interval, (0.0, 1.0), "guidance_interval", "[t_lo, t_hi]")
    out = {}
    for m, pair in chosen.items():
        items = list(pair) if isinstance(pair, Sequence) and not isinstance(pair, str) else [pair]
        real = len(items) == 2 and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in items)
        if not real or not 0.0 <= float(items[0]) < float(items[1]) <= 1.0:
            raise ValueError(
                f"guidance_interval{suffix.format(m)} must be [t_lo, t_hi] with 0 <= t_lo < t_hi <= 1, got {items}"
            )
        out[m] = (float(items[0]), float(items[1]))
    return out


def _as(out, dtype: torch.dtype):
    """A field output with its floating-point tensors in ``dtype``."""
    return type(out)(*(x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x for x in out))


def split_molecules(state: MoleculeState, batch: Tensor, pairs: Tensor) -> list[tuple[MoleculeState, Tensor]]:
    """Per molecule: its state and its pairs ``[2, P_g]``, with atom indices local to the molecule."""
    num_graphs = int(batch.max()) + 1
    sizes = scatter(torch.ones_like(batch), batch, 0, dim_size=num_graphs)
    starts = torch.cumsum(sizes, 0) - sizes
    pair_graph = batch[pairs[0]]
    out = []
    for g, (start, size) in enumerate(zip(starts.tolist(), sizes.tolist())):
        keep = pair_graph == g
        atoms = slice(start, start + size)
        out.append(
            (
                MoleculeState(state.pos[atoms], state.atom_type[atoms], state.charge[atoms], state.bond_type[keep]),
                pairs[:, keep] - start,
            )
        )
    return out

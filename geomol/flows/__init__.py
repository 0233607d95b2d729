"""Flow matching for molecules: priors with OT alignment, interpolation schedules, CTMC mask flows,
property conditioning and the Euler sampler (PropMolFlow, Zeng et al. 2025; FlowMol, Dunn & Koes 2024)."""

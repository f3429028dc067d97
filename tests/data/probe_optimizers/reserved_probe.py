"""A user's probe whose own options are named like the keys the probes section keeps for
itself (tests/test_probe_optimizers.py): the plan would take them, and the function would
never see its values."""


def norm_by_group(ctx, optimizers: int = 1, every: int = 2) -> dict:
    """The parameters' norm, summed over ``optimizers`` groups (a name a user might pick)."""
    return {"norm_by_group": float(sum(p.detach().norm() for p in ctx.session.params)) * optimizers}

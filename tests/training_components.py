"""Small reference optimizers with other step contracts, for tests/test_step_contracts.py
(and the case files under tests/data/training that name them by import path)."""
from __future__ import annotations

import torch


class CauchyStep(torch.optim.Optimizer):
    """Steepest descent with the exact step along g on a quadratic: x ← x − lr·(gᵀg/gᵀHg)·g,
    Hg by differentiating p.grad — so backward must keep the graph (create_graph)."""

    stability_bench_contract = "create_graph"

    def __init__(self, params, lr: float = 1.0):
        super().__init__(params, {"lr": lr})

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        grads = [p.grad for p in params]
        hg = torch.autograd.grad(grads, params, grad_outputs=[g.detach() for g in grads])
        gg = sum((g.detach() * g.detach()).sum() for g in grads)
        ghg = sum((g.detach() * h).sum() for g, h in zip(grads, hg))
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(self.param_groups[0]["lr"] * (gg / ghg) * g.detach())


class ScheduleFreeSGD(torch.optim.Optimizer):
    """Schedule-free SGD (Defazio et al. 2024, "The Road Less Scheduled", without warmup):
    y = (1−β)z + βx, g = ∇f(y), z ← z − lr·g, x ← (1 − 1/t)x + (1/t)z. The parameters hold
    y in train mode and x in eval mode; x and z live in the state."""

    def __init__(self, params, lr: float = 0.1, beta: float = 0.9):
        super().__init__(params, {"lr": lr, "beta": beta})
        self.training = True

    def _state(self, p):
        state = self.state[p]
        if not state:
            state.update(x=p.detach().clone(), z=p.detach().clone(), t=0)
        return state

    @torch.no_grad()
    def train(self):
        self.training = True
        for group in self.param_groups:
            for p in group["params"]:
                s = self._state(p)
                p.copy_((1 - group["beta"]) * s["z"] + group["beta"] * s["x"])

    @torch.no_grad()
    def eval(self):
        self.training = False
        for group in self.param_groups:
            for p in group["params"]:
                p.copy_(self._state(p)["x"])

    @torch.no_grad()
    def step(self, closure=None):
        assert self.training, "step() in eval mode"
        for group in self.param_groups:
            for p in group["params"]:
                s = self._state(p)
                s["t"] += 1
                s["z"].sub_(group["lr"] * p.grad)
                s["x"].mul_(1 - 1 / s["t"]).add_(s["z"], alpha=1 / s["t"])
                p.copy_((1 - group["beta"]) * s["z"] + group["beta"] * s["x"])


class NeedsLoss(torch.optim.SGD):
    """An optimizer whose step wants the loss: the harness cannot call it."""

    def step(self, loss):  # noqa: D102
        return super().step()


class TypoContract(torch.optim.SGD):
    stability_bench_contract = "creat_graph"


class ClosureGD(torch.optim.Optimizer):
    """Gradient descent through step(closure) that keeps what each closure call returned and
    the gradient it left (tests/test_loss_negate.py: with ``loss: {negate: true}`` both are
    of −loss)."""

    def __init__(self, params, lr: float = 0.1):
        super().__init__(params, {"lr": lr})
        self.returned: list[float] = []
        self.grads: list[torch.Tensor] = []

    @torch.no_grad()
    def step(self, closure):
        with torch.enable_grad():
            self.returned.append(float(closure().detach()))
        params = [p for group in self.param_groups for p in group["params"]]
        self.grads.append(torch.cat([p.grad.reshape(-1) for p in params]).clone())
        for p in params:
            p.sub_(self.param_groups[0]["lr"] * p.grad)

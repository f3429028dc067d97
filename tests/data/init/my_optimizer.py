"""A user's own optimizer for tests/test_init_scaffold.py: Adam written out by hand, as a
project of its own would, with the bias-corrected second moment as one method so a later
commit can change that one formula (my_optimizer_changed.py)."""
import torch


class MyAdam(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    def second_moment(self, v, t, beta2):
        return v / (1 - beta2 ** t)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                state["t"] += 1
                t = state["t"]
                state["m"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["v"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = state["m"] / (1 - beta1 ** t)
                p.sub_(group["lr"] * m_hat / (self.second_moment(state["v"], t, beta2).sqrt() + group["eps"]))

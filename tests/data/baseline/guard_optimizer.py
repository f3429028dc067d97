"""A user's own optimizer for tests/test_baseline_workflow.py: Adam whose β₁ is a module
constant, so a test can change the optimizer's code (not the case) the way a commit would."""
import torch

BETA1 = 0.9


class GuardAdam(torch.optim.Adam):
    def __init__(self, params, lr=1e-3):
        super().__init__(params, lr=lr, betas=(BETA1, 0.999))

"""An optimizer whose __init__ needs a hyperparameter without a default (rho) that
`stability-bench init` cannot choose (tests/test_init_scaffold.py)."""
from my_optimizer import MyAdam


class NeedsRho(MyAdam):
    def __init__(self, params, rho, lr=1e-2):
        super().__init__(params, lr=lr)
        self.rho = rho

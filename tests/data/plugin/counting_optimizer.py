"""SGD that appends a line to $COUNT_FILE at the first step of each run: counts trainings
(validation also builds the optimizer, on a dummy parameter, but never steps it)."""
import os

import torch


class CountingSGD(torch.optim.SGD):
    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.counted = False

    def step(self, closure=None):
        if not self.counted:
            self.counted = True
            with open(os.environ["COUNT_FILE"], "a") as f:
                f.write("trained\n")
        return super().step(closure)

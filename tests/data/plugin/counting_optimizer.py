"""SGD that appends a line to $COUNT_FILE each time it is built: counts trainings."""
import os

import torch


class CountingSGD(torch.optim.SGD):
    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        with open(os.environ["COUNT_FILE"], "a") as f:
            f.write("built\n")

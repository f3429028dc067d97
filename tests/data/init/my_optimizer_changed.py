"""my_optimizer.py after a commit that changes one formula: the second moment loses its
bias correction (a classic slip: early steps ~1/sqrt(1 - beta2^t) times too large, ~30x at
t = 1). tests/test_init_scaffold.py installs this file as the project's my_optimizer.py,
with the original beside it as my_optimizer_before.py; the class keeps its name, so the case
and its baseline are unchanged and only the optimizer's code moved."""
from my_optimizer_before import MyAdam as _Before


class MyAdam(_Before):
    def second_moment(self, v, t, beta2):
        return v

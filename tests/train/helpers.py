"""Small fixtures shared by the training tests."""
import torch

from certunlearn_train.models import MLP


def tiny_problem(n=24, seed=0):
    """A 64-8-10 MLP and n random 1x8x8 inputs with labels, all from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return MLP(64, 10, (8,)), torch.rand(n, 1, 8, 8, generator=g), \
        torch.randint(0, 10, (n,), generator=g)


def flat_params(model):
    """All parameters of ``model`` as one detached 1-D tensor."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class Pairs(torch.utils.data.Dataset):
    """A map-style dataset made on the fly: sample i is (x[i], y[i]) (under a process group each
    rank reads only its slice of every batch)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

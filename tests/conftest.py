from collections.abc import Iterator

import matplotlib
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppgen
from ppgen.nn import Conditional, Root

matplotlib.use("Agg")
torch.set_num_threads(1)  # the suite's tensors are small: one thread avoids spinning on 2 cores


@pytest.fixture(autouse=True)
def torch_seed() -> Iterator[None]:
    """Every test starts from seed 0, in float64, and leaves the RNG and dtype as they were."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    with torch.random.fork_rng():
        pyro.set_rng_seed(0)
        yield
    torch.set_default_dtype(dtype)


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


class Relay(ppgen.Model):
    """The relay race of the course notes, as in the design document (../shared/DESIGN.md)."""

    def __init__(self):
        super().__init__()
        self.t0 = Root(dist.Normal)
        self.t1 = Conditional(dist.Normal, in_features=1)
        self.t2 = Conditional(dist.Normal, in_features=1)

    def forward(self, n=1):
        with pyro.plate("race", n):
            t0 = pyro.sample("t0", self.t0())
            t1 = pyro.sample("t1", self.t1(t0))
            pyro.sample("t2", self.t2(t1))


@pytest.fixture
def relay() -> Relay:
    return Relay()

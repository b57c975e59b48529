"""Names every doctest in ppgen/ may use without importing them."""

import networkx as nx
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppgen
from ppgen.nn import Conditional, LinearGaussian, Root, Tabular


@pytest.fixture(autouse=True)
def doctest_names(doctest_namespace: dict) -> None:
    doctest_namespace.update(
        torch=torch, pyro=pyro, dist=dist, nx=nx, ppgen=ppgen, Root=Root,
        Conditional=Conditional, Tabular=Tabular, LinearGaussian=LinearGaussian,
    )  # fmt: skip

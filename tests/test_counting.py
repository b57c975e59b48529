import re

import networkx as nx
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import AutoRegressiveNN

from ppgen.counting import count_parameters
from ppgen.nn import Conditional, Root, Tabular


@pytest.mark.parametrize("n", [1, 2, 5, 10, 64])
def test_binary_counts_of_the_notes(n):
    binary = [2] * n
    assert count_parameters(binary) == 2**n - 1
    assert count_parameters(binary, "independent") == n
    chain = [(i, i + 1) for i in range(n - 1)]
    assert count_parameters(binary, chain) == 2 * n - 1
    assert count_parameters(binary, nx.DiGraph(chain)) == 2 * n - 1
    assert count_parameters(binary, "chain") == sum(2**i for i in range(n))
    full = [(j, i) for i in range(n) for j in range(i)]
    assert count_parameters(binary, full) == sum(2**i for i in range(n)) == 2**n - 1


def test_counts_are_exact_python_ints():
    rgb = count_parameters([256, 256, 256])
    assert rgb == 256**3 - 1 and type(rgb) is int
    assert count_parameters([2] * 784) == 2**784 - 1  # far beyond float precision


def test_named_variables_and_mixed_cardinalities():
    cards = {"a": 3, "b": 2, "c": 4}
    assert count_parameters(cards, [("a", "c"), ("b", "c")]) == 2 + 1 + 3 * 3 * 2
    assert count_parameters(cards, "independent") == 2 + 1 + 3


@pytest.mark.parametrize(
    "structure,message",
    [("full", "Unknown structure"), ([(0, 1), (1, 0)], "cycle"), ([(0, 9)], "cardinality"),
     (nx.Graph([(0, 1)]), "Expected a directed graph"),  # not "a cycle": 0 -> 1 -> 0
     ([(0, 1, 2)], "Expected edges as \\(parent, child\\) pairs")],
)  # fmt: skip
def test_bad_structures(structure, message):
    with pytest.raises(ValueError, match=message):
        count_parameters([2, 2], structure)


def test_module_counts():
    assert count_parameters(Tabular(2, (2, 2))) == 4
    cond = Conditional(dist.Normal, in_features=3, hidden=(5,))
    assert count_parameters(cond) == (3 * 5 + 5) + (5 * 2 + 2)
    module = torch.nn.ModuleDict({"x": Root(dist.Bernoulli), "y": Tabular(3, (2,))})
    assert count_parameters(module) == 1 + 4
    made = AutoRegressiveNN(4, [8], param_dims=[1], permutation=torch.arange(4))
    masks = sum(int(layer.mask.sum()) + layer.bias.numel() for layer in made.layers)
    assert count_parameters(made) == masks < sum(p.numel() for p in made.parameters())


def test_numpy_cardinalities_count_as_ints():
    import numpy as np

    assert count_parameters([np.int64(2), 3], "joint") == 5
    with pytest.raises(ValueError, match="Cardinalities must be positive ints"):
        count_parameters([True, 2], "joint")


def test_a_shared_module_or_tied_weight_counts_once():
    encoder = torch.nn.Linear(3, 4)  # 16 parameters, reached twice
    shared = torch.nn.ModuleDict({"encoder": encoder, "decoder": torch.nn.Sequential(encoder)})
    assert count_parameters(shared) == 16 == sum(p.numel() for p in shared.parameters())
    tied = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 3), "b": torch.nn.Linear(3, 3)})
    tied["b"].weight = tied["a"].weight  # one 3x3 weight, two biases
    assert count_parameters(tied) == 9 + 3 + 3 == sum(p.numel() for p in tied.parameters())
    node = Conditional(dist.Normal, in_features=1, hidden=(3,))
    twice = torch.nn.ModuleDict({"x": node, "y": torch.nn.ModuleList([node])})
    assert count_parameters(twice) == node.n_params == (3 + 3) + (3 * 2 + 2)


@pytest.mark.parametrize("given,name", [(lambda: None, "function"), (3, "int"), (None, "NoneType")])
def test_a_program_or_a_number_is_not_cardinalities(given, name):
    message = ("count_parameters takes cardinalities (a sequence or mapping of ints) or a module, "
               f"not a value of type {name}; for a program's parameters, pass the nn.Module")
    with pytest.raises(ValueError, match=re.escape(message)):
        count_parameters(given)


def test_a_program_is_refused_naming_the_module_to_count():
    class VAE(torch.nn.Module):  # examples/vae, ported as count_parameters(vae.model)
        def model(self, x):
            pass

    vae = VAE()
    with pytest.raises(ValueError, match=r"^count_parameters takes cardinalities .* or a module, "
                       r"not a value of type method; for a program's parameters, pass the nn.Module"):  # fmt: skip
        count_parameters(vae.model)

r"""ppgen: generative models written as directed graphical models in Pyro."""

__version__ = "0.1.0"

from ppgen.builder import dag
from ppgen.graph import factorization, graph
from ppgen.nn import Model
from ppgen.viz import draw

__all__ = ["Model", "__version__", "dag", "draw", "factorization", "graph"]

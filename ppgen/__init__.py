r"""ppgen: generative models written as directed graphical models in Pyro."""

from ppgen import counting, datasets, guides, metrics, models, viz
from ppgen.builder import dag
from ppgen.counting import count_parameters
from ppgen.density import log_prob, sample
from ppgen.graph import factorization, graph
from ppgen.infer import fit_gan, fit_mle, fit_svi
from ppgen.io import load, save
from ppgen.model import Model
from ppgen.result import FitResult
from ppgen.version import __version__
from ppgen.viz import draw

__all__ = [
    "__version__",
    "FitResult",
    "Model",
    "count_parameters",
    "counting",
    "dag",
    "datasets",
    "draw",
    "factorization",
    "fit_gan",
    "fit_mle",
    "fit_svi",
    "graph",
    "guides",
    "load",
    "log_prob",
    "metrics",
    "models",
    "sample",
    "save",
    "viz",
]

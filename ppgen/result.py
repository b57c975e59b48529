r"""What a fit returns: :class:`FitResult`, its history and the epochs it kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["NONFINITE", "FitResult"]

# what every fit's error for a non-finite loss says of the model: the loop restores it so
NONFINITE = "the model keeps the parameters of the last epoch that ended"


@dataclass
class FitResult:
    r"""What a fit returns, beside the fitted model itself.

    Attributes:
        history: One record per epoch: `epoch`, `train` and `val` (the mean log-likelihood or
            ELBO in nats per row), `train/TERM`, `val/TERM` per term (a site's, or a GAN's
            losses), and `seconds` (the epoch's optimisation time, validation excluded).
        best_epoch: For each group of parameters trained together (a site, or `"all"`), the
            epoch whose parameters were kept.
        closed_form: The sites solved exactly, without gradient steps.
        seconds: The wall-clock time of the fit.
        categories: The labels of the data's label columns, in the order of their codes; the
            model keeps them too (:func:`ppgen.model.coding`) and uses them by default.
        interrupted: Whether the fit was stopped by Ctrl-C (the model then holds the best
            parameters reached so far).
        guide: For :func:`ppgen.fit_svi`, the fitted guide (the auto guide it built, for
            `"auto_normal"` / `"auto_delta"`), e.g. for
            `pyro.infer.Predictive(model, guide=fit.guide, num_samples=1000)`.

    Example:
        >>> FitResult(history=[{"epoch": 1, "train": -1.5}])
        FitResult(epochs=1, train=-1.5000, closed_form=[])
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: dict[str, int] = field(default_factory=dict)
    closed_form: list[str] = field(default_factory=list)
    seconds: float = 0.0
    categories: dict[str, list[object]] = field(default_factory=dict)
    interrupted: bool = False
    guide: Callable[..., object] | None = None

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else {}
        shown = ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k in ("train", "val"))
        return f"FitResult(epochs={len(self.history)}, {shown}, closed_form={self.closed_form})"

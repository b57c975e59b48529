r"""The adversarial game of a GAN as a step of the one loop: two players, two optimisers.

:class:`AdversarialStep` trains a :class:`ppgen.models.GAN`'s discriminator and generator in
alternating Adam steps (with an optional R1 penalty and an average of the generator), records
the discriminator's judgement, and scores the generator on held-out rows by the MMD²;
:func:`ppgen.fit_gan` hands it to :func:`ppgen.loop.train`, which can checkpoint and resume it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ppgen.data import Table
from ppgen.distributed import Lockstep, active, all_reduce
from ppgen.metrics import mmd
from ppgen.result import NONFINITE
from ppgen.steps import check_parameters, copy_parameters, load_optimizer_state, optimizer_state

__all__ = ["AdversarialStep"]


class AdversarialStep(nn.Module):
    r"""The two-player step of a GAN for :func:`ppgen.loop.train` (a :class:`~ppgen.steps.Step`).

    Called on a batch of real rows, it returns the loop's terms per row without changing
    anything: `loss_d`, `loss_g`, the discriminator's `accuracy` on real and generated rows and
    its probabilities that they are real, `d_real` (:math:`D(x)`) and `d_fake`
    (:math:`D(G(z))`). Accuracy alone does not tell whether the discriminator wins: it is high
    with :math:`D(G(z)) = 0.49`, where the two generator losses have the same gradient; the
    minimax loss saturates only where :math:`D(G(z)) \approx 0`. :meth:`train_on` trains on the
    batch: `d_steps` Adam steps of the discriminator (each on fresh codes), then one of the
    generator, and returns the terms of the last steps; :meth:`step` is the same for the loop.
    :meth:`score` measures the generator on held-out rows, for the loop's choice of an epoch.

    Arguments:
        gan: The GAN.
        lr_g, lr_d: The learning rates of the generator and the discriminator.
        d_steps: Discriminator steps per generator step.
        betas: Adam's betas, for both players.
        r1: The weight :math:`\gamma` of the R1 penalty
            :math:`\frac{\gamma}{2} \lVert \nabla_x \ell(x) \rVert^2` on the discriminator's
            logit at real rows (Mescheder et al., 2018), added to its loss (0: none). It keeps
            the discriminator smooth around the data; the recorded `loss_d` leaves it out.
        samples: The generated rows :meth:`score` draws.
        validated: Whether held-out rows choose the epoch: both players then form one group
            (`"gan"`, scored by the MMD² `mmd`); else each its own, kept at the last epoch.
        average: The decay :math:`\beta` of an exponential moving average
            :math:`\bar\theta \leftarrow \beta \bar\theta + (1 - \beta) \theta` of the
            generator's parameters after each of its steps (Yazıcı et al., 2019), kept in
            `averaged` (a :class:`torch.optim.swa_utils.AveragedModel`; its `module` is the
            averaged generator), whose rows :meth:`score` measures; `None`: no average.

    Example:
        >>> from ppgen.models.gan import GAN, MLPDiscriminator, MLPGenerator
        >>> gan = GAN(MLPGenerator(2, 3), MLPDiscriminator(3), 2)
        >>> sorted(AdversarialStep(gan).train_on({"*data": torch.randn(8, 3)}))
        ['accuracy', 'd_fake', 'd_real', 'loss_d', 'loss_g']
    """

    def __init__(
        self,
        gan: nn.Module,
        *,
        lr_g: float = 1e-3,
        lr_d: float = 1e-3,
        d_steps: int = 1,
        betas: tuple[float, float] = (0.5, 0.999),
        r1: float = 0.0,
        samples: int = 1000,
        average: float | None = None,
        validated: bool = False,
    ) -> None:
        super().__init__()
        if d_steps < 1:
            raise ValueError(f"d_steps must be at least 1, not {d_steps}.")
        if r1 < 0:
            raise ValueError(f"r1 must be at least 0, not {r1}.")
        if samples < 2:
            raise ValueError(f"samples must be at least 2, not {samples}.")
        if average is not None and not 0 <= average < 1:
            raise ValueError(f"average must be in [0, 1), not {average}.")
        self.gan, self.d_steps, self.r1, self.samples = gan, d_steps, r1, samples
        self.averaged = None
        if average is not None:
            self.averaged = AveragedModel(
                gan.generator, multi_avg_fn=get_ema_multi_avg_fn(average)
            )
        self.optimizer_g = torch.optim.Adam(gan.generator.parameters(), lr=lr_g, betas=betas)
        self.optimizer_d = torch.optim.Adam(gan.discriminator.parameters(), lr=lr_d, betas=betas)
        # each player's step in DDP under a process group (the generator's alone: D's
        # gradients from it are dropped); an error on one rank stops every rank
        self.critic = Lockstep(self._discriminator_loss, gan.discriminator)
        self.player = Lockstep(self._generator_loss, gan.generator)
        generator = list((gan.generator if self.averaged is None else self.averaged.module).parameters())
        if validated:  # the players of the epoch whose samples are nearest the held-out rows
            self.groups = {"gan": ([*generator, *gan.discriminator.parameters()], ["mmd"])}
        else:
            self.groups = {
                "generator": (generator, ["loss_g"]),
                "discriminator": (list(gan.discriminator.parameters()), ["loss_d"]),
            }
        self.terms: list[str] = []
        self.constant: dict[str, float] = {}

    summed = False  # the players' losses are two objectives, not one
    maximise = False  # losses and the MMD²: lower is better

    def _terms(self, x: Tensor) -> dict[str, Tensor]:
        gan = self.gan
        fake = gan.generator(gan.prior(len(x)).sample())
        real_logits, fake_logits = gan.discriminator(x), gan.discriminator(fake)
        return {
            "loss_d": gan.discriminator_loss(real_logits, fake_logits.detach()),
            "loss_g": gan.generator_loss(fake_logits),
            **_judgement(real_logits, fake_logits),
        }

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The terms per row, shape :math:`(N,)`, on fresh codes, without gradients."""
        with torch.no_grad():
            return self._terms(next(iter(batch.values())))

    def score(self, batch: dict[str, Tensor]) -> dict[str, float]:
        r"""The unbiased MMD² (:func:`ppgen.metrics.mmd`, median-heuristic bandwidth on the rows)
        between `samples` rows of the generator (the averaged one, with `average`) and the
        held-out rows `batch`, as `{"mmd": value}`: lower is better. The draws leave the random
        state as it was; under a process group the ranks' values are averaged."""
        x, gan = next(iter(batch.values())), self.gan
        generator = gan.generator if self.averaged is None else self.averaged.module
        cuda = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            value = x.new_tensor(mmd(generator(gan.prior(self.samples).sample()), x))
        group = active()
        value = all_reduce(value) / (1 if group is None else group[1])
        return {"mmd": float(value)}

    def evaluate(self, data: Table, batch_size: int) -> dict[str, float]:
        """The :meth:`score` of all the rows of `data` at once."""
        return self.score(data.rows(slice(None)))

    def parameters(self) -> list[Tensor]:  # type: ignore[override]
        """Both players' parameters, then the averaged generator's and its count of steps."""
        players = [*self.gan.generator.parameters(), *self.gan.discriminator.parameters()]
        if self.averaged is None:
            return players
        return [*players, *self.averaged.module.parameters(), self.averaged.n_averaged]

    def step(
        self, batch: dict[str, Tensor], rows: float, epoch: int, frozen: set[str]
    ) -> Tensor | None:
        """Trains both players on `batch` (:meth:`train_on`); returns the terms' sums over
        its rows, stacked in the order of :attr:`terms`."""
        terms = self.train_on(batch, rows)
        self.terms = list(terms)
        return torch.stack([t.detach().sum() for t in terms.values()])

    def state(self) -> tuple[dict[str, Tensor], dict[str, object]]:
        tensors = {f"param.{i}": p.detach() for i, p in enumerate(self.parameters())}
        meta = {}
        for name, optimizer in (("optim_g", self.optimizer_g), ("optim_d", self.optimizer_d)):
            state, meta[name] = optimizer_state(optimizer, name)
            tensors.update(state)
        return tensors, meta

    def load_state(self, tensors: Mapping[str, Tensor], meta: Mapping[str, object]) -> None:
        check_parameters(self.parameters(), tensors)
        for name, optimizer in (("optim_g", self.optimizer_g), ("optim_d", self.optimizer_d)):
            load_optimizer_state(optimizer, name, tensors, meta[name])
        copy_parameters(self.parameters(), tensors)

    def train_on(self, batch: dict[str, Tensor], rows: float | None = None) -> dict[str, Tensor]:
        """Trains both players on the batch, each loss summed over the rows and divided by
        `rows` (`None`: the batch's length); returns the terms per row, detached."""
        x = next(iter(batch.values()))
        rows = len(x) if rows is None else rows
        for _ in range(self.d_steps):
            loss_d, outputs = self.critic(x, rows)
            self.optimizer_d.zero_grad(set_to_none=True)
            self.critic.backward(loss_d)  # raises on every rank where the loss failed on one
            self.optimizer_d.step()
        loss_g, player_outputs = self.player(len(x), rows)
        self.optimizer_g.zero_grad(set_to_none=True)
        self.player.backward(loss_g)
        self.optimizer_d.zero_grad(set_to_none=True)  # D's gradients from G's step are dropped
        self.optimizer_g.step()
        if self.averaged is not None:
            self.averaged.update_parameters(self.gan.generator)
        (terms_d, real_logits), (terms_g, fake_logits) = outputs, player_outputs
        return {"loss_d": terms_d, "loss_g": terms_g, **_judgement(real_logits, fake_logits)}

    def _discriminator_loss(self, x: Tensor, rows: float) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        gan = self.gan
        with torch.no_grad():
            fake = gan.generator(gan.prior(len(x)).sample())
        if self.r1:
            x = x.detach().requires_grad_(True)
        real_logits, fake_logits = gan.discriminator(x), gan.discriminator(fake)
        loss_d = gan.discriminator_loss(real_logits, fake_logits)
        penalised = loss_d
        if self.r1:  # R1: the squared norm of the logit's gradient at each real row
            (grad,) = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
            penalised = loss_d + self.r1 / 2 * grad.pow(2).reshape(len(x), -1).sum(1)
        _check(penalised, "discriminator", "lr_d")
        return penalised.sum() / rows, (loss_d.detach(), real_logits.detach())

    def _generator_loss(self, n: int, rows: float) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        gan = self.gan  # the discriminator's own gradients here are dropped, never averaged
        fake_logits = gan.discriminator(gan.generator(gan.prior(n).sample()))
        loss_g = gan.generator_loss(fake_logits)
        _check(loss_g, "generator", "lr_g")
        return loss_g.sum() / rows, (loss_g.detach(), fake_logits.detach())


def _judgement(real_logits: Tensor, fake_logits: Tensor) -> dict[str, Tensor]:
    """The discriminator's accuracy and its probabilities D(x), D(G(z)) that rows are real."""
    hits = (real_logits > 0).to(real_logits.dtype) + (fake_logits < 0).to(fake_logits.dtype)
    return {
        "accuracy": hits / 2,
        "d_real": torch.sigmoid(real_logits),
        "d_fake": torch.sigmoid(fake_logits),
    }


def _check(loss: Tensor, player: str, lr: str) -> None:
    if not torch.isfinite(loss).all():
        raise ValueError(
            f"The {player}'s loss became non-finite; {NONFINITE}. Try a smaller {lr}."
        )

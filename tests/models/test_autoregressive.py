import io
import itertools

import pyro
import pytest
import torch
from pyro import poutine

import ppgen
from ppgen.infer import fit_mle
from ppgen.models import FVSBN, MADE, NADE, RNADE, Independent, MaskedConv2d, PixelCNN

D = 6

MODELS = {
    "independent": lambda **kw: Independent(D, **kw),
    "fvsbn": lambda **kw: FVSBN(D, **kw),
    "nade": lambda **kw: NADE(D, hidden_features=5, **kw),
    "made": lambda **kw: MADE(D, hidden_features=(12, 12), **kw),
    "made-order": lambda **kw: MADE(D, hidden_features=(12,), order=[3, 1, 5, 0, 4, 2], **kw),
    "pixelcnn": lambda **kw: PixelCNN((2, 3), channels=4, layers=1, kernel_size=3, **kw),
    "pixelcnn-residual": lambda **kw: PixelCNN(
        (2, 3), channels=4, layers=2, kernel_size=3, residual=True, **kw
    ),
    "pixelcnn-position": lambda **kw: PixelCNN(
        (2, 3), channels=4, layers=1, kernel_size=3, position=True, **kw
    ),
    "pixelcnn-rectangle": lambda **kw: PixelCNN((3, 2), channels=3, layers=2, kernel_size=(3, 5), **kw),
    "made-deep": lambda **kw: MADE(
        D, hidden_features=(6, 9, 7), order=[4, 0, 5, 2, 1, 3], skip_connections=False, **kw
    ),
}


def randomized(model):
    """Random parameters, so that no dependence hides behind a zero initialisation."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1.0)
    return model


def all_images(d=D):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))


@pytest.fixture(params=list(MODELS))
def name(request):
    return request.param


def test_contract(name):
    model = randomized(MODELS[name]())
    x = model(n=7)
    assert x.shape == (7, D) and set(x.unique().tolist()) <= {0.0, 1.0}
    d = model.distribution(7)
    assert d.batch_shape == (7,) and d.event_shape == (D,)
    log_p = d.log_prob(x)
    assert log_p.shape == (7,) and torch.isfinite(log_p).all()
    log_p.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    clone = MODELS[name]()
    clone.load_state_dict(torch.load(buffer))
    assert torch.equal(clone.distribution(7).log_prob(x), log_p)
    assert type(model).__name__ in repr(model)


def test_log_prob_sums_to_one(name):
    model = randomized(MODELS[name]())
    log_p = model.distribution(2**D).log_prob(all_images())
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-9)


def test_samples_match_the_density_by_chi_square(name):
    """The D sequential draws (the joint site, and ppgen.sample of the pixel sites) have the
    frequencies of the exact p(x) over all 2^D images."""
    joint = randomized(MODELS[name]())
    pixels = MODELS[name](sites="pixels")
    pixels.load_state_dict(joint.state_dict())
    with torch.no_grad():
        p = joint.distribution(2**D).log_prob(all_images()).exp()
        drawn = ppgen.sample(pixels, 20000)
        rows = [joint.distribution(20000).sample(), torch.stack([drawn[f"x_{i}"] for i in range(D)], -1)]
    expected = 20000 * p
    rare = expected < 5  # pooled into one cell, as the chi-square approximation asks
    pool = [expected[rare].sum()[None]] if rare.any() else []
    expected = torch.cat([expected[~rare], *pool])
    df = len(expected) - 1
    # the 0.9999 quantile of chi-square with df degrees of freedom (Wilson and Hilferty)
    bound = df * (1 - 2 / (9 * df) + 3.719 * (2 / (9 * df)) ** 0.5) ** 3
    for x in rows:
        cells = (x * 2 ** torch.arange(D - 1, -1, -1)).sum(-1).long()
        counts = torch.bincount(cells, minlength=2**D).double()
        counts = torch.cat([counts[~rare], *([counts[rare].sum()[None]] if pool else [])])
        assert ((counts - expected) ** 2 / expected).sum().item() < bound


def test_autoregressive_jacobian(name):
    model = randomized(MODELS[name]())
    x = torch.rand(D, requires_grad=True)
    jacobian = torch.autograd.functional.jacobian(model.logits, x)  # (i, j): d logit_i / d x_j
    rank = torch.empty_like(model.order)
    rank[model.order] = torch.arange(D)
    later = rank[None, :] >= rank[:, None]  # j is not before i in the order
    assert (jacobian[later] == 0).all()
    assert (jacobian[~model.connectivity()] == 0).all()
    assert not (model.connectivity() & later).any()


def test_log_prob_is_validated_as_pyros_distributions_are(name):
    # Pyro's Bernoulli refuses a grey level; the joint once scored it, and a row of D + 1
    # pixels failed deep inside the network
    d = MODELS[name]().distribution(2)
    with pytest.raises(ValueError, match="within the support"):
        d.log_prob(torch.full((2, D), 0.5))
    with pytest.raises(ValueError, match=r"must match event_shape: torch.Size\(\[2, 7\]\)"):
        d.log_prob(torch.ones(2, D + 1))
    ones = torch.ones(2, D)
    expected = d.log_prob(ones)
    assert torch.equal(d.log_prob(ones.long()), expected)
    assert torch.equal(d.log_prob(ones.bool()), expected)
    with pyro.validation_enabled(False):  # as for Pyro's: no check, the plain formula
        assert torch.isfinite(d.log_prob(torch.full((2, D), 0.5))).all()
    grey = {f"x_{i}": torch.full((2,), 0.5) for i in range(D)}  # the pixel sites' Bernoullis
    trace = poutine.trace(pyro.condition(MODELS[name](sites="pixels"), data=grey)).get_trace(n=2)
    with pytest.raises(ValueError, match="within the support"):
        trace.log_prob_sum()


def pixel_log_prob(model, x):
    data = {f"x_{i}": x[:, i] for i in range(D)}
    trace = poutine.trace(pyro.condition(model, data=data)).get_trace(n=len(x))
    return sum(trace.nodes[f"x_{i}"]["fn"].log_prob(x[:, i]) for i in range(D))


def test_pixel_sites_same_density_and_graph(name):
    joint = randomized(MODELS[name]())
    pixels = MODELS[name](sites="pixels")
    pixels.load_state_dict(joint.state_dict())
    x = all_images()
    expected = joint.distribution(len(x)).log_prob(x)
    assert torch.allclose(pixel_log_prob(pixels, x), expected, atol=1e-12)
    parents = joint.connectivity()
    edges = {(f"x_{j}", f"x_{i}") for i in range(D) for j in range(D) if parents[i, j]}
    assert set(ppgen.graph(pixels).edges) == edges
    assert set(ppgen.graph(joint).nodes) == {"x"}


@pytest.mark.parametrize("model", [FVSBN(9, sites="pixels"), NADE(9, sites="pixels")])
def test_chain_rule_graph_of_3x3_image(model):
    expected = {(f"x_{j}", f"x_{i}") for i in range(9) for j in range(i)}
    assert set(ppgen.graph(model).edges) == expected
    assert ppgen.draw(model) is not None


def test_pixelcnn_receptive_field_of_3x3_image():
    model = PixelCNN((3, 3), channels=2, layers=0, kernel_size=3, sites="pixels")
    edges = set(ppgen.graph(model).edges)
    expected = set()
    for r, c in itertools.product(range(3), range(3)):
        above = [(r - 1, c + dc) for dc in (-1, 0, 1)] + [(r, c - 1)]
        expected |= {
            (f"x_{3 * a + b}", f"x_{3 * r + c}") for a, b in above if 0 <= a < 3 and 0 <= b < 3
        }
    assert edges == expected
    # one type-B layer more widens the field, but never beyond the pixels before in raster order
    deeper = PixelCNN((3, 3), channels=2, layers=1, kernel_size=3).connectivity()
    assert deeper.sum() > len(expected) and not deeper.triu().any()


def test_pixelcnn_full_type_a_kernel_has_no_blind_spot():
    before = torch.ones(64, 64, dtype=torch.bool).tril(-1)
    plain = PixelCNN((8, 8), channels=2, layers=4, kernel_size=7).connectivity()
    assert (before & ~plain).any()  # the blind spot of stacked masked convolutions
    full = PixelCNN((8, 8), channels=2, layers=2, kernel_size=15, residual=True).connectivity()
    assert full.equal(before)


def test_pixelcnn_position_tells_blank_pixels_apart():
    # on a blank image the type-A layer sees only zeros, inside the image or in the padding alike
    # (1x1 layers after it: no hidden padding either)
    blank = torch.zeros(1, 9)
    torch.manual_seed(0)
    plain = randomized(PixelCNN((3, 3), channels=4, layers=0, kernel_size=5)).logits(blank)
    assert torch.allclose(plain, plain[0, 0].expand(1, 9), atol=1e-12)
    model = randomized(PixelCNN((3, 3), channels=4, layers=0, kernel_size=5, position=True))
    assert len(model.logits(blank).unique()) == 9


def test_pixelcnn_dropout_only_in_training_steps():
    model = randomized(PixelCNN((2, 3), channels=8, layers=2, kernel_size=3, dropout=0.5))
    x = all_images()
    with torch.no_grad():  # scoring and sampling: the whole network, deterministic
        log_p = model.distribution(len(x)).log_prob(x)
        assert torch.equal(model.distribution(len(x)).log_prob(x), log_p)
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-9)
    assert not torch.equal(model.logits(x), model.logits(x))  # a training step drops units
    model.eval()
    assert torch.equal(model.distribution(len(x)).log_prob(x), log_p)


def test_masked_conv_masks():
    a, b = MaskedConv2d("A", 2, 3, 5), MaskedConv2d("B", 2, 3, 5)
    assert a.mask.shape == a.weight.shape
    assert a.mask[0, 0, 2, 2] == 0 and b.mask[0, 0, 2, 2] == 1
    assert a.mask.sum() == 3 * 2 * 12 and b.mask.sum() == 3 * 2 * 13
    with pytest.raises(ValueError, match="mask_type"):
        MaskedConv2d("C", 1, 1, 3)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_masked_conv_pads_with_zeros_only(mode):
    # at the border, these modes copy pixels below, to the right or the pixel itself: a type-A
    # output at (0, 0) of a 3x4 image read pixels 1, 4, 5 (reflect), 0, 1 (replicate) or
    # 3, 8, 9, 11 (circular), and none before it
    with pytest.raises(ValueError, match=f"pads with zeros only: padding_mode='{mode}'"):
        MaskedConv2d("A", 1, 1, 3, padding=1, padding_mode=mode)
    conv = randomized(MaskedConv2d("B", 1, 1, (3, 5), padding=(2, 4), dilation=2))
    jacobian = torch.autograd.functional.jacobian(lambda x: conv(x.reshape(1, 1, 3, 4)), torch.rand(12))
    assert not jacobian.reshape(12, 12).triu(1).any()  # zeros, dilated, non-square: no pixel after


def test_made_resample_keeps_a_normalised_autoregressive_model():
    model = randomized(MADE(D, hidden_features=(12,)))
    model.resample([5, 4, 3, 2, 1, 0])
    assert model.connectivity().equal(torch.ones(D, D, dtype=torch.bool).triu(1))
    log_p = model.distribution(2**D).log_prob(all_images())
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-9)
    model.resample()
    assert sorted(model.order.tolist()) == list(range(D))


def test_bad_sites():
    with pytest.raises(ValueError, match="sites"):
        FVSBN(3, sites="rows")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: NADE(0), "NADE needs features >= 1, not 0"),  # was a ZeroDivisionError
        (lambda: FVSBN(-1), "FVSBN needs features >= 1, not -1"),  # was torch's RuntimeError
        (lambda: PixelCNN((3,)), r"an image shape \(H, W\) .* not shape=\(3,\)"),
        (lambda: PixelCNN((2, 2), channels=0), "channels=0"),  # built, with constant logits
        (lambda: PixelCNN((2, 2), layers=-1), "layers=-1"),  # built with no type-B layer
        (lambda: MADE(5, hidden_features=(8, 3)), r"at least D = 5 units each .* not \[8, 3\]"),
    ],
)
def test_sizes_that_make_no_model_are_refused_in_one_sentence(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_one_pixel_models_are_normalised_and_quiet():
    # D = 1, a 1x1 image: MADE once passed on Pyro's warning about flows of one dimension
    x = torch.tensor([[0.0], [1.0]])
    for model in [FVSBN(1), NADE(1), MADE(1, hidden_features=(3,)), PixelCNN((1, 1), channels=2)]:
        log_p = randomized(model).distribution(2).log_prob(x)
        assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-12)
        assert model.connectivity().equal(torch.zeros(1, 1, dtype=torch.bool))


def known_rows(n):
    """x0 ~ B(0.8); x1 copies x0 with probability 0.9; x2 = x0 xor x1 with probability 0.95."""
    x0 = torch.bernoulli(torch.full((n,), 0.8))
    x1 = torch.where(torch.rand(n) < 0.9, x0, 1 - x0)
    x2 = torch.where(torch.rand(n) < 0.95, (x0 != x1).double(), (x0 == x1).double())
    return torch.stack([x0, x1, x2], -1)


KNOWN = {"x0": 0.8, "x1": 0.8 * 0.9 + 0.2 * 0.1, "x2": 0.95 * 0.1 + 0.05 * 0.9, "x0==x1": 0.9}


@pytest.mark.parametrize(
    "make",
    [
        lambda: Independent(3),
        lambda: FVSBN(3),
        lambda: NADE(3, hidden_features=8),
        lambda: MADE(3, hidden_features=(16,)),
        lambda: PixelCNN((1, 3), channels=8, layers=1, kernel_size=3),
    ],
)
def test_fitted_samples_reproduce_known_marginals(make):
    model = make()
    fit_mle(model, {"x": known_rows(2000)}, epochs=40, batch_size=250, lr=0.03, progress=False)
    with torch.no_grad():
        x = model.distribution(4000).sample()
    # sd: Monte Carlo <= 0.5 / sqrt(4000) = 0.008, fit <= 0.5 / sqrt(2000) = 0.011; 0.05 is > 3.6 sd
    for i in range(3):
        assert x[:, i].mean().item() == pytest.approx(KNOWN[f"x{i}"], abs=0.05)
    if not isinstance(model, Independent):
        assert (x[:, 0] == x[:, 1]).double().mean().item() == pytest.approx(0.9, abs=0.05)


def test_rnade_density_integrates_to_one_and_is_autoregressive():
    model = randomized(RNADE(2, components=3, hidden_features=4))
    with torch.no_grad():
        for p in (model.bias, model.out_weight):
            p.mul_(0.3)  # moderate scales, so that a grid of step 0.033 resolves every bump
    grid = torch.linspace(-10.0, 10.0, 601)
    x = torch.cartesian_prod(grid, grid)
    density = model.distribution(len(x)).log_prob(x).exp().reshape(601, 601)
    mass = torch.trapezoid(torch.trapezoid(density, grid), grid).item()
    assert mass == pytest.approx(1.0, abs=1e-6)
    y = torch.randn(2, requires_grad=True)
    jacobian = torch.autograd.functional.jacobian(model.eta, y)  # (i, k, j)
    assert (jacobian[0] == 0).all() and (jacobian[1, :, 1] == 0).all()
    assert jacobian[1, :, 0].abs().sum() > 0


def test_rnade_pixel_sites_and_fit():
    joint = RNADE(3, components=2, hidden_features=4)
    pixels = RNADE(3, components=2, hidden_features=4, sites="pixels")
    pixels.load_state_dict(joint.state_dict())
    x = torch.randn(5, 3)
    data = {f"x_{i}": x[:, i] for i in range(3)}
    trace = poutine.trace(pyro.condition(pixels, data=data)).get_trace(n=5)
    per_site = sum(trace.nodes[f"x_{i}"]["fn"].log_prob(x[:, i]) for i in range(3))
    assert torch.allclose(per_site, joint.distribution(5).log_prob(x), atol=1e-12)
    assert set(ppgen.graph(pixels).edges) == {("x_0", "x_1"), ("x_0", "x_2"), ("x_1", "x_2")}
    # a 2-D target whose second coordinate is bimodal given the first: x1 = +-2 x0 + noise
    x0 = torch.randn(2000)
    sign = torch.where(torch.rand(2000) < 0.5, -1.0, 1.0)
    rows = torch.stack([x0, 2 * sign * x0 + 0.1 * torch.randn(2000)], -1)
    model = RNADE(2, components=2, hidden_features=16)
    fit_mle(model, {"x": rows}, epochs=60, batch_size=200, lr=0.03, progress=False)
    samples = model.distribution(2000).sample()
    assert samples.shape == (2000, 2) and torch.isfinite(samples).all()
    # the target's entropy is 1.42 (x0) + 0.69 - 0.88 (x1) = 1.23 nats per row; one Gaussian
    # per conditional cannot go below 1.42 + 0.5 log(2 pi e E[4 x0^2]) = 3.54
    assert -model.distribution(2000).log_prob(rows).mean().item() < 1.5


def test_made_order_must_be_a_permutation_and_it_needs_a_hidden_layer():
    for bad in ([0, 0, 1], [0, 1], [0, 1, 3]):
        with pytest.raises(ValueError, match="order must be a permutation of 0..2"):
            MADE(3, hidden_features=(8,), order=bad)
    made = MADE(3, hidden_features=(8,))
    before = made.order.clone()
    with pytest.raises(ValueError, match=r"not \[1, 1, 2\]"):
        made.resample([1, 1, 2])
    assert torch.equal(made.order, before)
    with pytest.raises(ValueError, match="MADE needs at least one hidden layer"):
        MADE(3, hidden_features=())


def test_an_even_kernel_is_refused():
    with pytest.raises(ValueError, match="The kernel must have odd sides, not 4x4"):
        PixelCNN((7, 9), kernel_size=4)

"""The discriminator heads' shape contract and what each token's logit can see (dcm/models/discriminator.py)."""

import pytest
import torch

from dcm.config import ConfigError, DiscriminatorConfig, load_config
from dcm.models.discriminator import Discriminator
from tests.conftest import REPO

pytestmark = pytest.mark.fast


def heads(kernel: int) -> Discriminator:
    torch.manual_seed(0)
    return Discriminator([6], DiscriminatorConfig(
        tap_every=1, hidden=4, groups=2, residual=True, kernel=kernel, real="data", noise_window="detail",
        leaky_slope=0.01, chance_accuracy=0.55, lr=1e-4, betas=(0.0, 0.999), weight_decay=0.0,
        updates_per_step=1, warmup_steps=0))


@pytest.mark.parametrize("kernel", [1, 3])
def test_one_logit_per_token_at_every_kernel(kernel):
    grid = (2, 5, 5)  # frames, rows, cols of tokens
    logits = heads(kernel)([torch.randn(3, 2 * 5 * 5, 6)], grid)
    assert [tuple(x.shape) for x in logits] == [(3, *grid)]


@pytest.mark.parametrize("kernel, reach", [(1, 0), (3, 1)])
def test_the_first_conv_reaches_its_neighbours_and_stays_centred(kernel, reach):
    # one token lit at (row 2, col 2): the first conv's output moves exactly where its kernel, centred on each
    # token, covers that token, so no logit is shifted off its own patch
    conv = heads(kernel).heads[0].project[0]
    tokens = torch.zeros(1, 6, 5, 5)
    lit = tokens.clone()
    lit[0, :, 2, 2] = 1.0
    with torch.no_grad():
        moved = (conv(lit) - conv(tokens)).abs().sum(dim=(0, 1)) > 0
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[2 - reach:3 + reach, 2 - reach:3 + reach] = True
    assert torch.equal(moved, expected)


def test_an_even_kernel_is_refused():
    with pytest.raises(ConfigError, match="discriminator.kernel=2 must be odd"):
        load_config(REPO / "params.yaml", ["distill.discriminator.kernel=2"])

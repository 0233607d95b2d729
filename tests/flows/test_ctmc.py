import pytest
import torch
from torch.nn import functional as F

from geomol.flows.ctmc import MaskedFlow
from geomol.flows.interpolants import CosineSchedule, LinearSchedule, interpolate, make_schedule, position_step


def test_corrupt_masks_with_probability_one_minus_alpha(generator):
    flow = MaskedFlow(5)
    x1 = torch.randint(0, 5, (40000,), generator=generator)
    alpha = torch.full((40000,), 0.3)
    xt = flow.corrupt(x1, alpha, generator)
    masked = xt == flow.mask_index
    assert masked.float().mean().item() == pytest.approx(0.7, abs=0.01)
    assert torch.equal(xt[~masked], x1[~masked])
    with pytest.raises(ValueError, match="out of range"):
        flow.corrupt(torch.tensor([5]), torch.tensor([0.5]))


def test_loss_is_cross_entropy_on_masked_tokens_only(generator):
    flow = MaskedFlow(4)
    x1 = torch.tensor([0, 1, 2, 3, 1])
    xt = torch.tensor([4, 1, 4, 3, 4])
    logits = torch.randn(5, 4, generator=generator)
    expected = F.cross_entropy(logits[[0, 2, 4]], x1[[0, 2, 4]])
    torch.testing.assert_close(flow.loss(logits, x1, xt), expected)
    # Predictions for tokens already unmasked do not matter.
    changed = logits.clone()
    changed[[1, 3]] += 10.0
    torch.testing.assert_close(flow.loss(changed, x1, xt), expected)
    # Nothing masked: zero, and still differentiable.
    logits.requires_grad_(True)
    zero = flow.loss(logits, x1, x1)
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_step_unmask_and_remask_rates(generator):
    flow = MaskedFlow(3)
    n = 40000
    logits = torch.tensor([[0.0, 2.0, -1.0]]).expand(n, 3)
    masked = torch.full((n,), 3)
    alpha_t, alpha_s, dt, eta = 0.2, 0.3, 0.1, 2.0
    out = flow.step(masked, logits, alpha_t, alpha_s, dt, eta=eta, temperature=1.0, generator=generator)
    expected = (alpha_s - alpha_t + eta * dt * alpha_t) / (1 - alpha_t)
    assert (out != 3).float().mean().item() == pytest.approx(expected, abs=0.01)
    # Unmasked tokens follow softmax(logits / temperature).
    drawn = out[out != 3]
    freq = torch.bincount(drawn, minlength=3).float() / drawn.numel()
    torch.testing.assert_close(freq, torch.softmax(logits[0], -1), atol=0.02, rtol=0)
    # Unmasked tokens re-mask at rate eta, and only then.
    clean = torch.ones(n, dtype=torch.long)
    again = flow.step(clean, logits, alpha_t, alpha_s, dt, eta=eta, generator=generator)
    assert (again == 3).float().mean().item() == pytest.approx(eta * dt, abs=0.01)
    assert bool(((again == 1) | (again == 3)).all())
    assert torch.equal(flow.step(clean, logits, alpha_t, alpha_s, dt, eta=0.0, generator=generator), clean)


def test_last_step_leaves_no_mask(generator):
    flow = MaskedFlow(5)
    xt = torch.tensor([5, 5, 0, 5, 3, 5])
    logits = torch.randn(6, 5, generator=generator)
    for schedule in (LinearSchedule(), CosineSchedule(2.0)):
        t = torch.tensor([0.99, 1.0], dtype=torch.float64)
        a_t, a_s = schedule.alpha(t).tolist()
        out = flow.step(xt, logits, a_t, a_s, 0.01, eta=100.0, temperature=0.05, generator=generator)
        assert bool((out < 5).all())
        assert out[2] == 0 and out[4] == 3


def test_schedules_and_position_step(generator):
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    for kind in ("linear", "cosine"):
        alpha = make_schedule(kind, nu=1.5).alpha(t)
        assert alpha[0] == 0 and alpha[-1] == pytest.approx(1.0)
        assert bool((alpha[1:] > alpha[:-1]).all())
    torch.testing.assert_close(CosineSchedule(1.0).alpha(t), 1 - torch.cos(torch.pi / 2 * t) ** 2)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("sigmoid")
    x0 = torch.randn(4, 3, generator=generator)
    x1 = torch.randn(4, 3, generator=generator)
    torch.testing.assert_close(interpolate(x0, x1, torch.full((4,), 0.25)), 0.75 * x0 + 0.25 * x1)
    # Euler steps land on the endpoint at alpha = 1; for the linear schedule this is dt / (1 - t).
    torch.testing.assert_close(position_step(x0, x1, 0.9, 1.0), x1)
    torch.testing.assert_close(position_step(x0, x1, 0.5, 0.6), x0 + 0.1 / 0.5 * (x1 - x0))

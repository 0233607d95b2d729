from pathlib import Path

import hydra
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from geomol.data.images import load_mnist
from geomol.models.affine_cnn import AUTHORS_CONVENTIONS, AffineCNN, PlainCNN, _ResidualBlock
from geomol.nn.liegroup import GL2, SL2
from geomol.tasks.image import ImageTask

CONF = Path(__file__).resolve().parents[2] / "geomol" / "conf"
SMALL = dict(channels=6, num_blocks=1, hidden_features=16, head_hidden=16)


@pytest.mark.parametrize("group", ["gl2", "sl2"])
def test_affine_cnn_is_invariant_to_quarter_turns(group):
    """With the SPD factor switched off and 8 equidistant angles, the sample set is closed under
    quarter turns, so the logits must be exactly invariant (the pixel grid maps onto itself)."""
    torch.manual_seed(0)
    net = AffineCNN(group=group, sampler=dict(num_samples=8, spd_std=0.0), **SMALL).double().eval()
    x = torch.rand(3, 1, 40, 40, dtype=torch.float64)
    logits = net(x)
    assert logits.shape == (3, 10)
    for k in (1, 2, 3):
        torch.testing.assert_close(net(torch.rot90(x, k, (2, 3))), logits, rtol=1e-9, atol=1e-10)
    # The translation-only twin is not.
    cnn = PlainCNN(channels=6, num_blocks=1, head_hidden=16).double().eval()
    assert (cnn(torch.rot90(x, 1, (2, 3))) - cnn(x)).abs().max() > 1e-4


@pytest.mark.parametrize("model, blocks", [("affine", 1), ("plain", 1), ("affine", 2), ("plain", 3)])
def test_zero_background_makes_logits_independent_of_position(model, blocks):
    """With zero_background an empty region has zero features and the maps grow to hold every response,
    so moving a digit anywhere on the canvas (by multiples of the pooling stride) leaves the logits
    unchanged; the default (biases, layer norms, "same" padding) sees the canvas edge."""
    torch.manual_seed(0)
    x = torch.zeros(3, 1, 40, 40, dtype=torch.float64)
    x[:, :, 1:25, 2:21] = torch.rand(3, 1, 24, 19, dtype=torch.float64)  # touches the top and left edges
    shift = {1: (14, 18), 2: (12, 16), 3: (8, 16)}[blocks]  # multiples of the pooling stride 2**blocks
    moved = torch.roll(x, shift, dims=(2, 3))  # now it touches (or nearly touches) the bottom and right edges

    def build(zero_background):
        torch.manual_seed(1)
        if model == "affine":
            small = SMALL | dict(num_blocks=blocks)
            net = AffineCNN(sampler=dict(num_samples=4), mix_samples=False, zero_background=zero_background, **small)
        else:
            net = PlainCNN(channels=6, num_blocks=blocks, head_hidden=16, zero_background=zero_background)
        return net.double().eval()

    with torch.no_grad():
        net = build(True)
        torch.testing.assert_close(net(moved), net(x), rtol=1e-10, atol=1e-12)
        assert net(torch.zeros_like(x)).abs().max() > 0  # the head still has its biases
        default = build(False)
        assert (default(moved) - default(x)).abs().max() > 1e-3
    assert not any(name.endswith("conv1.bias") or name == "stem.bias" for name, _ in net.named_parameters())


@pytest.mark.parametrize("group", ["gl2", "sl2"])
def test_fixed_rotation_closed_samples_keep_quarter_turn_invariance(group):
    """With a non-trivial SPD factor the set is closed under quarter turns only when the SPD factors
    cycle with the angles (spd_cycle=1 or 2 for 8 angles); then the logits are exactly invariant."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 40, 40, dtype=torch.float64)
    errors = {}
    for cycle in (0, 1, 2):
        sampler = dict(num_samples=8, spd_std=0.3, spd_sampling="quasi", spd_cycle=cycle, resample=False)
        net = AffineCNN(group=group, sampler=sampler, **SMALL)
        net = net.double().eval()
        with torch.no_grad():
            logits = net(x)
            errors[cycle] = max((net(torch.rot90(x, k, (2, 3))) - logits).abs().max().item() for k in (1, 2, 3))
    assert errors[1] < 1e-10 and errors[2] < 1e-10 and errors[0] > 1e-4, errors
    # Group convolutions that keep the slices apart (a max over transformed views) keep the invariance.
    views = (
        AffineCNN(
            group=group,
            sampler=dict(num_samples=8, spd_std=0.3, spd_sampling="quasi", spd_cycle=1, resample=False),
            mix_samples=False,
            **SMALL,
        )
        .double()
        .eval()
    )
    with torch.no_grad():
        torch.testing.assert_close(views(torch.rot90(x, 1, (2, 3))), views(x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mix", [True, False], ids=["mixed", "apart"])
@pytest.mark.parametrize("group", ["gl2", "sl2"])
def test_signal_transform_keeps_quarter_turn_invariance(group, mix):
    """transform="signal" (feature maps resampled instead of kernels) on a set closed under quarter turns:
    the logits are exactly invariant too, and the whole network differs from the kernel-frame one."""
    torch.manual_seed(0)
    closed = dict(num_samples=8, spd_std=0.0)
    net = AffineCNN(group=group, sampler=closed, mix_samples=mix, transform="signal", **SMALL)
    net = net.double().eval()
    x = torch.rand(2, 1, 40, 40, dtype=torch.float64)
    with torch.no_grad():
        logits = net(x)
        for k in (1, 2, 3):
            torch.testing.assert_close(net(torch.rot90(x, k, (2, 3))), logits, rtol=1e-9, atol=1e-10)
        kernel_frame = AffineCNN(group=group, sampler=closed, mix_samples=mix, **SMALL).double().eval()
        kernel_frame.load_state_dict(net.state_dict())
        assert (kernel_frame(x) - logits).abs().max() > 1e-6


def test_eval_sampler_overrides():
    """Training draws follow sampler.angle_range / spd_std; the eval set follows eval_sampler's angles /
    angle_range / spd_std and stays the same from call to call."""
    net = AffineCNN(
        sampler=dict(num_samples=6, angles="uniform", angle_range=0.25, spd_std=0.2, resample=True),
        eval_sampler=dict(num_samples=8, angles="equidistant", angle_range=0.125, spd_std=0.0),
        **SMALL,
    )
    group = SL2()
    train_angles = torch.cat([group.polar(net.group_samples())[1] for _ in range(20)])
    train_theta = torch.atan2(train_angles[:, 1, 0], train_angles[:, 0, 0])
    assert train_theta.abs().max() <= torch.pi / 4 and train_theta.abs().max() > torch.pi / 8
    net.eval()
    samples = net.group_samples()
    assert samples.shape == (8, 2, 2)
    theta = torch.atan2(samples[:, 1, 0], samples[:, 0, 0])
    expected = torch.pi / 8 * (2 * torch.arange(8, dtype=torch.float64) - 7) / 8
    torch.testing.assert_close(theta, expected)  # pure turns (eval spd_std=0) on the narrower grid
    torch.testing.assert_close(net.group_samples(), samples)
    with pytest.raises(ValueError, match="angle_range"):
        AffineCNN(eval_sampler=dict(angle_range=2.0), **SMALL)


def test_group_samples_stream():
    counts = dict(sampler=dict(num_samples=5), eval_sampler=dict(num_samples=7))
    net = AffineCNN(group="gl2", seed=3, **counts, **SMALL)
    first, second = net.group_samples(), net.group_samples()
    assert first.shape == (5, 2, 2) and not torch.equal(first, second)
    again = AffineCNN(group="gl2", seed=3, **counts, **SMALL)
    assert torch.equal(again.group_samples(), first)
    net.eval()
    fixed = net.group_samples()
    assert fixed.shape == (7, 2, 2) and torch.equal(fixed, net.group_samples())
    assert GL2().contains(first) and not torch.allclose(torch.linalg.det(first), torch.ones(5, dtype=first.dtype))
    with pytest.raises(ValueError, match="angles"):
        AffineCNN(sampler=dict(angles="random"), **SMALL)
    with pytest.raises(ValueError, match="head_norm"):
        AffineCNN(head_norm="group", **SMALL)


def test_fixed_samples_without_resampling():
    """resample=False trains on the eval-mode set: the same samples at every step, in train and eval mode;
    with quasi SPD factors and equidistant angles the set does not depend on the seed either."""
    fixed = dict(num_samples=6, resample=False, spd_sampling="quasi")
    net = AffineCNN(group="sl2", sampler=fixed, seed=3, **SMALL)
    first = net.group_samples()
    assert torch.equal(first, net.group_samples()) and int(net.sample_step) == 0
    other = AffineCNN(group="sl2", sampler=fixed, seed=9, **SMALL)
    assert torch.equal(other.group_samples(), first)
    net.eval()
    assert torch.equal(net.group_samples(), first)
    x = torch.rand(2, 1, 40, 40)
    torch.testing.assert_close(net(x), net(x))
    # The random sampler with a fixed set: still the eval set, now seed dependent.
    random = AffineCNN(group="gl2", sampler=dict(num_samples=5, resample=False), seed=3, **SMALL)
    train_set = random.group_samples()
    assert torch.equal(train_set, random.eval().group_samples())
    assert not torch.equal(
        train_set, AffineCNN(group="gl2", sampler=dict(num_samples=5, resample=False), seed=4, **SMALL).group_samples()
    )
    with pytest.raises(ValueError, match="spd_sampling"):
        AffineCNN(sampler=dict(spd_sampling="grid"), **SMALL)


@pytest.mark.parametrize("group", ["gl2", "sl2"])
def test_one_training_step_lowers_the_loss_on_mnist_digits(group, fixtures_dir):
    """One Adam step of the configured size (the paper's lr 2e-4) on 64 real digits, in training mode,
    lowers the loss on that batch, measured on the same group samples (the stream is rewound)."""
    images, labels = load_mnist(fixtures_dir / "mnist", "train", download=False)
    x = F.pad(images[:64], (6, 6, 6, 6)).unsqueeze(1).float() / 255.0
    y = labels[:64]
    torch.manual_seed(0)
    config = OmegaConf.load(CONF / "model" / "affine_cnn.yaml")
    task = ImageTask(
        net={
            "_target_": "geomol.models.affine_cnn.AffineCNN",
            "group": group,
            "sampler": {"num_samples": 4},
            "dropout": 0.0,
            **SMALL,
        },
        num_classes=10,
        optimizer=config.optimizer,
    )
    optimizer = task.configure_optimizers()
    task.train()
    step = task.net.sample_step.clone()
    loss = F.cross_entropy(task(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    task.net.sample_step.copy_(step)
    with torch.no_grad():
        after = F.cross_entropy(task(x), y).item()
    assert after < loss.item() - 1e-3, (loss.item(), after)


def _config(tmp_path: Path, *overrides: str):
    cfg = OmegaConf.create(
        {
            "paths": {"data_dir": str(tmp_path)},
            "data": OmegaConf.load(CONF / "data" / "mnist_affine.yaml"),
            "model": OmegaConf.load(CONF / "model" / "affine_cnn.yaml"),
        }
    )
    OmegaConf.set_struct(cfg, True)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def test_configs_train_on_fixture_and_reload(tmp_path, fixtures_dir):
    """The train.py path: data module → task_kwargs → ImageTask → fast_dev_run, then a checkpoint
    that loads with no extra arguments; `model.group` and `model.num_samples` reach the network."""
    cfg = _config(
        tmp_path,
        f"data.root={fixtures_dir / 'mnist'}",
        "data.val_size=50",
        "data.batch_size=8",
        "data.download=false",
        "model.group=gl2",
        "model.num_samples=3",
        "model.net.channels=4",
        "model.net.num_blocks=1",
        "model.net.hidden_features=8",
        "model.net.head_hidden=8",
    )
    datamodule = hydra.utils.instantiate(cfg.data)
    task = hydra.utils.instantiate(cfg.model, **datamodule.task_kwargs(), _recursive_=False)
    assert isinstance(task.net.group, GL2) and task.net.sampler.num_samples == 3
    trainer = pl.Trainer(
        fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(task, datamodule=datamodule)
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(trainer.logged_metrics)
    trainer.test(task, datamodule=datamodule, verbose=False)
    assert {"test/loss", "test/acc"} <= set(trainer.logged_metrics)
    path = tmp_path / "affine.ckpt"
    trainer.save_checkpoint(path)
    loaded = ImageTask.load_from_checkpoint(path)
    assert isinstance(loaded.net.group, GL2) and loaded.hparams.group == "gl2"
    x = next(iter(datamodule.test_dataloader()))[0]
    task.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), task(x))
    # A model-level handle that does not reach the network is refused.
    with pytest.raises(ValueError, match="group"):
        ImageTask(net={"_target_": "geomol.models.affine_cnn.AffineCNN"}, num_classes=10, optimizer={}, group="gl2")
    # num_samples reaches the network through its sampler node.
    with pytest.raises(ValueError, match="net.sampler.num_samples is 4"):
        net = {"_target_": "geomol.models.affine_cnn.AffineCNN", "sampler": {"num_samples": 4}}
        ImageTask(net=net, num_classes=10, optimizer={}, num_samples=3)


def test_experiment_config_overrides_existing_keys(tmp_path):
    """Every key the experiment sets exists in the data and model configs (no silent new keys)."""
    experiment = OmegaConf.load(CONF / "experiment" / "affine_cnn_mnist.yaml")
    assert list(experiment.defaults) == [{"override /data": "mnist_affine"}, {"override /model": "affine_cnn"}]
    cfg = _config(tmp_path)
    merged = OmegaConf.merge(cfg, {"data": experiment.data, "model": experiment.model})
    assert merged.model.scheduler.T_max == experiment.trainer.max_epochs
    assert merged.model.net.group == "sl2" and isinstance(
        hydra.utils.instantiate(merged.model, num_classes=10, _recursive_=False).net.group, SL2
    )


# -- the authors' recipe (experiment=affine_cnn_mnist) and geomol's options ---------------------------


def authors(*changes: dict) -> dict:
    """AffineCNN arguments: AUTHORS_CONVENTIONS with the authors' LayerNorm head, then ``changes`` (nested
    sampler nodes merged, not replaced)."""
    return OmegaConf.to_container(OmegaConf.merge(AUTHORS_CONVENTIONS, {"head_norm": "layer"}, *changes))


def _experiment_net(tmp_path: Path, name: str, **net_overrides):
    experiment = OmegaConf.load(CONF / "experiment" / f"{name}.yaml")
    merged = OmegaConf.merge(_config(tmp_path), {"data": experiment.data, "model": experiment.model})
    merged.model.net = OmegaConf.merge(merged.model.net, net_overrides)
    if "group" in net_overrides:
        merged.model.group = net_overrides["group"]
    return hydra.utils.instantiate(merged.model, num_classes=10, _recursive_=False).net


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_authors_experiment_is_their_model(tmp_path):
    """experiment=affine_cnn_mnist builds rgenn's train.py model: 339,102 parameters on SL(2) and 339,282 on
    GL⁺(2) (the counts their code prints; lifting 9,940 + 3 group convs of 105,280 (+60 on GL⁺(2)) + head
    13,322), with every convention of theirs; geomol's previous two-block layout had 444,982."""
    net = _experiment_net(tmp_path, "affine_cnn_mnist")
    assert _count(net) == 339_102
    assert _count(net.lift) == 9_940 and _count(net.final) == 105_280 and _count(net.head) == 13_322
    assert len(net.blocks) == 1 and net.layout == "authors" and net.final.padding == 0 and net.blocks[0].act_before_add
    # No norm parameters and no conv biases: only the SIRENs and the head are learned.
    assert [name for name, _ in net.named_parameters() if ".siren." not in name and not name.startswith("head.")] == []
    assert net.sampler.spd_law == "authors" and net.sampler.angles == "linspace" and net.eval_sampler.resample
    assert net.lift.resolved_mask_type == "circular" and net.lift.offsets.abs().max().item() == pytest.approx(0.8)
    for conv in (net.blocks[0].conv1, net.blocks[0].conv2, net.final):
        assert conv.sample_reduce == "sum" and conv.angle_chart == "positive" and conv.resolved_mask_type == "circular"
        assert not any(layer.bias.any() for layer in conv.siren.layers[1:])
    assert _count(_experiment_net(tmp_path, "affine_cnn_mnist", group="gl2")) == 339_282
    geomol = _experiment_net(
        tmp_path, "affine_cnn_mnist", layout="geomol", num_blocks=2, norm_affine=True, conv_bias=None
    )
    assert _count(geomol) == 444_982
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 1, 40, 40)).shape == (1, 10)


def test_cpu_experiment_keeps_geomol_choices(tmp_path):
    """experiment=affine_cnn_mnist_cpu pins geomol's conventions (and keeps the bench's 17,930 parameters)."""
    net = _experiment_net(tmp_path, "affine_cnn_mnist_cpu")
    assert _count(net) == 17_930 and net.layout == "geomol" and net.zero_background and not net.eval_sampler.resample
    assert net.lift.resolved_mask_type == "smooth" and net.lift.offsets.abs().max().item() == 1.0
    assert net.sampler.spd_law == "geomol" and net.blocks[0].conv1.sample_reduce == "mean"


def test_authors_block_activates_before_the_add():
    """rgenn's GSimpleBlock: GELU(x + GELU(LN(conv(GELU(LN(conv(x))))))); geomol's leaves out the inner GELU."""

    class Scale(torch.nn.Module):
        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return self.factor * x

    x = torch.randn(2, 3, 4, 6, 6, dtype=torch.float64)
    ln = lambda t: F.layer_norm(t, t.shape[1:])  # noqa: E731
    inner = ln(-0.5 * F.gelu(ln(2.0 * x)))
    for act_before_add, expected in [(True, F.gelu(x + F.gelu(inner))), (False, F.gelu(x + inner))]:
        block = _ResidualBlock(Scale(2.0), Scale(-0.5), 3, False, norm_affine=False, act_before_add=act_before_add)
        torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("group", ["gl2", "sl2"])
def test_authors_layout_keeps_quarter_turn_invariance_on_a_closed_set(group):
    """With all the authors' conventions but a set closed under quarter turns (geomol's centred 8-gon, no SPD
    factor) the logits are exactly invariant; the authors' grid linspace(-π, π, 8) is not closed under them."""
    torch.manual_seed(0)
    small = dict(channels=6, hidden_features=16, head_hidden=16, sampler=dict(num_samples=8, spd_std=0.0))
    fixed = dict(eval_sampler=dict(resample=False))
    x = torch.rand(2, 1, 40, 40, dtype=torch.float64)
    closed = AffineCNN(group=group, **authors(small, fixed, dict(sampler=dict(angles="equidistant"))))
    theirs = AffineCNN(group=group, **authors(small, fixed))
    theirs.load_state_dict(closed.state_dict())
    with torch.no_grad():
        for net, exact in [(closed.double().eval(), True), (theirs.double().eval(), False)]:
            logits = net(x)
            error = max((net(torch.rot90(x, k, (2, 3))) - logits).abs().max().item() for k in (1, 2, 3))
            assert (error < 1e-10) if exact else (error > 1e-6), (exact, error)


def test_eval_resample_draws_a_new_set_at_every_eval_pass():
    """eval_sampler.resample (the authors' sample_inference=True): eval-mode sets differ from call to call, come from
    a seeded stream of their own (a fresh module repeats it), and leave the training stream alone."""
    redrawn = dict(sampler=dict(num_samples=5), eval_sampler=dict(resample=True))
    net = AffineCNN(seed=2, **redrawn, **SMALL).eval()
    first, second = net.group_samples(), net.group_samples()
    assert not torch.equal(first, second) and int(net.sample_step) == 0
    again = AffineCNN(seed=2, **redrawn, **SMALL).eval()
    assert torch.equal(again.group_samples(), first)
    fixed = AffineCNN(sampler=dict(num_samples=5), seed=2, **SMALL).eval()
    assert torch.equal(fixed.group_samples(), fixed.group_samples())
    assert not torch.equal(fixed.group_samples(), first)


def test_per_layer_sample_sets_are_the_authors_sampling_wrapper():
    """sample_sets="per_layer": lifting and block on draw 0, the final group conv from draw 1 to draw 2 (rgenn's
    SamplingWrapper, whose final conv reads the block's features as lying on the block's own draw)."""
    seen = {}

    def record(name):
        return lambda module, args: seen.__setitem__(name, args[1:])

    four_fixed = dict(sampler=dict(num_samples=4), eval_sampler=dict(resample=False))
    net = AffineCNN(**authors(SMALL, four_fixed, dict(sample_sets="per_layer"))).eval()
    net.lift.register_forward_pre_hook(record("lift"))
    net.blocks[0].conv1.register_forward_pre_hook(record("block"))
    net.final.register_forward_pre_hook(record("final"))
    sets = net.group_sample_sets()
    assert net.num_sample_sets == 3 and len(sets) == 3
    assert not torch.equal(sets[0], sets[1]) and not torch.equal(sets[1], sets[2])
    with torch.no_grad():
        net(torch.rand(1, 1, 40, 40))
    assert torch.equal(seen["lift"][0], sets[0]) and torch.equal(seen["block"][0], sets[0])
    assert torch.equal(seen["final"][0], sets[1]) and torch.equal(seen["final"][1], sets[2])
    shared = AffineCNN(**authors(SMALL, four_fixed)).eval()
    assert shared.num_sample_sets == 1 and torch.equal(shared.group_samples(), sets[0])
    with pytest.raises(ValueError, match="mix_samples"):
        AffineCNN(**authors(SMALL, dict(sample_sets="per_layer", mix_samples=False)))
    with pytest.raises(ValueError, match="sample_sets"):
        AffineCNN(sample_sets="each", **SMALL)
    with pytest.raises(ValueError, match="layout"):
        AffineCNN(layout="resnet", **SMALL)
    with pytest.raises(ValueError, match="conv_bias"):
        AffineCNN(zero_background=True, conv_bias=True, **SMALL)


def test_sum_and_mean_over_samples_differ_only_through_the_norms_eps():
    """Every group conv feeds a scale-invariant norm, so the authors' sum and geomol's mean (a factor N_in = 10)
    give nearly the same logits on the same weights: the bench's reduce=mean variant measures the norms' eps."""
    torch.manual_seed(0)
    small = dict(
        channels=6, hidden_features=16, head_hidden=16, sampler=dict(num_samples=10), eval_sampler=dict(resample=False)
    )
    total = AffineCNN(**authors(small)).double().eval()
    mean = AffineCNN(**authors(small, dict(sample_reduce="mean"))).double().eval()
    mean.load_state_dict(total.state_dict())
    x = torch.rand(2, 1, 40, 40, dtype=torch.float64)
    with torch.no_grad():
        samples = total.group_samples()
        h = F.gelu(total.lift_norm(total.lift(x, samples)))
        conv_total, conv_mean = total.blocks[0].conv1(h, samples), mean.blocks[0].conv1(h, samples)
        torch.testing.assert_close(conv_total, 10 * conv_mean)
        torch.testing.assert_close(mean(x), total(x), rtol=1e-3, atol=1e-4)

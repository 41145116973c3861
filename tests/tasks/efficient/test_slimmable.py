"""Slimmable networks: prefix slicing equals a narrow network, switchable BN keeps each width's statistics,
universal calibration gives the exact statistics, width checks, and the Lightning task through the CLI."""

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from normapps.cli.main import main
from normapps.models import SmallCNN
from normapps.tasks.efficient.slimmable import (
    SlimmableCNN,
    SwitchableBatchNorm2d,
    UniversalBatchNorm2d,
    calibrate,
    get_width,
    make_divisible,
    set_width,
    slim_channels,
    use_width,
)
from normapps.tasks.efficient.slimmable_task import SlimmableTask

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "configs" / "efficient"


def _randomize_bn(model):
    """Non-trivial affine parameters and running statistics in every BatchNorm (switchable ones included)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
            elif isinstance(module, UniversalBatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)


def _narrow_copy(model: SlimmableCNN, w: float) -> SmallCNN:
    """A SmallCNN of the width-w channel counts holding the prefixes of the slimmable weights and w's BatchNorms."""
    index = model.width_mults.index(w)
    c1 = slim_channels(8, w)
    narrow = SmallCNN(num_classes=10, norm="bn", width=c1, in_channels=1)
    with torch.no_grad():
        for position in (0, 3, 6):
            target, source = narrow.features[position], model.features[position]
            c_out, c_in = target.weight.shape[:2]
            target.weight.copy_(source.weight[:c_out, :c_in])
            narrow.features[position + 1].load_state_dict(model.features[position + 1].bns[index].state_dict())
        narrow.head.weight.copy_(model.head.weight[:, : 2 * c1])
        narrow.head.bias.copy_(model.head.bias)
    return narrow


@pytest.mark.parametrize("w", [0.25, 0.5, 1.0])
def test_slicing_equals_a_narrow_network_with_the_copied_prefix_weights(one_thread, w):
    model = SlimmableCNN(num_classes=10, width=8, width_mults=(0.25, 0.5, 1.0))
    _randomize_bn(model)
    narrow = _narrow_copy(model, w)
    assert narrow.features[3].weight.shape[0] == slim_channels(16, w)  # the narrow topology is the sliced one
    x = torch.randn(6, 1, 16, 16)
    set_width(model, w)
    for train in (False, True):  # population statistics, then batch statistics
        model.train(train)
        narrow.train(train)
        torch.testing.assert_close(model(x), narrow(x))


def test_channel_counts_round_as_the_authors_code():
    assert [slim_channels(32, w) for w in (0.25, 0.5, 0.75, 1.0)] == [8, 16, 24, 32]
    assert slim_channels(10, 0.25) == 3 and slim_channels(10, 0.05) == 1  # round half up, at least 1
    assert make_divisible(16 * 0.35, 8) == 8 and make_divisible(100 * 0.3, 8) == 32  # within 10% of the value


def test_switchable_bn_keeps_separate_statistics_and_parameters_per_width(one_thread):
    model = SlimmableCNN(num_classes=10, width=8, width_mults=(0.25, 0.5, 1.0)).train()
    bn = model.features[4]
    before = [{k: v.clone() for k, v in b.state_dict().items()} for b in bn.bns]
    with use_width(model, 0.5):
        model(torch.randn(8, 1, 16, 16)).square().mean().backward()
    after = [b.state_dict() for b in bn.bns]
    for index, w in enumerate(model.width_mults):
        changed = not torch.equal(before[index]["running_mean"], after[index]["running_mean"])
        assert changed == (w == 0.5)
        assert (bn.bns[index].weight.grad is not None) == (w == 0.5)
    conv = model.features[3]  # 8 -> 16 channels; at 0.5 only the 8 x 4 prefix is used
    assert conv.weight.grad[:8, :4].abs().sum() > 0
    assert conv.weight.grad[8:].abs().sum() == 0 and conv.weight.grad[:, 4:].abs().sum() == 0


def _bn_inputs(model, batches):
    """The inputs of every universal BN when the network runs with batch statistics (training mode), per layer."""
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: inputs.setdefault(name, []).append(args[0]))
             for name, m in model.named_modules() if isinstance(m, UniversalBatchNorm2d)]
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for hook in hooks:
        hook.remove()
    return inputs


def test_universal_calibration_equals_exact_full_data_statistics(one_thread):
    model = SlimmableCNN(num_classes=10, width=8, universal=True)
    _randomize_bn(model)
    batches = [torch.randn(n, 1, 16, 16) * 2 + 1 for n in (5, 8, 3)]
    calibrate(model, 1.0, batches[:1])
    full = {name: m.statistics(1.0).running_mean.clone() for name, m in model.named_modules()
            if isinstance(m, UniversalBatchNorm2d)}
    model.train()
    calibrate(model, 0.6, batches)  # any width of the range, not only the listed ones
    assert model.training and get_width(model) == 1.0  # mode and width restored
    with use_width(model, 0.6):
        inputs = _bn_inputs(model, batches)
    for name, module in model.named_modules():
        if not isinstance(module, UniversalBatchNorm2d):
            continue
        x = torch.cat(inputs[name]).double().transpose(0, 1).flatten(1)
        assert x.shape[0] == slim_channels(module.num_features, 0.6)
        stats = module.statistics(0.6)
        torch.testing.assert_close(stats.running_mean.double(), x.mean(1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats.running_var.double(), x.var(1), rtol=1e-5, atol=1e-6)
        assert torch.equal(module.statistics(1.0).running_mean, full[name])  # another width's statistics stay
    assert model.features[1].calibrated_widths == (0.6, 1.0)
    # eval mode normalizes with the calibrated statistics and the shared affine, sliced
    first = model.features[1]
    x = torch.randn(4, first.channels(0.6), 5, 5)
    with use_width(model, 0.6):
        first.eval()
        stats = first.statistics()
        expected = F.batch_norm(x, stats.running_mean, stats.running_var, first.weight[:x.shape[1]], first.bias[:x.shape[1]],
                                False, 0.0, first.eps)
        torch.testing.assert_close(first(x), expected)


def test_universal_state_dict_round_trip_keeps_the_calibrated_widths(one_thread):
    model = SlimmableCNN(num_classes=10, width=8, universal=True)
    calibrate(model, 0.5, [torch.randn(6, 1, 16, 16)])
    loaded = SlimmableCNN(num_classes=10, width=8, universal=True)
    loaded.load_state_dict(model.state_dict())  # creates the stored widths' statistics
    x = torch.randn(3, 1, 16, 16)
    with use_width(model.eval(), 0.5), use_width(loaded.eval(), 0.5):
        torch.testing.assert_close(loaded(x), model(x))


def test_universal_eval_at_an_uncalibrated_width_says_to_calibrate(one_thread):
    model = SlimmableCNN(num_classes=10, width=8, universal=True)
    calibrate(model, 0.5, [torch.randn(6, 1, 16, 16)])
    set_width(model.eval(), 0.7)
    with pytest.raises(KeyError, match=r"calibrate\(model, 0.7, batches\).*calibrated widths: 0.5"):
        model(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate(model, 0.8, [])
    assert model.features[1].calibrated_widths == (0.5,)  # a failed calibration leaves no statistics behind


def test_set_width_rejects_a_width_the_network_does_not_have(one_thread):
    model = SlimmableCNN(num_classes=10, width=8)
    with pytest.raises(ValueError, match="expected one of 0.25, 0.5, 0.75, 1"):
        set_width(model, 0.6)
    assert get_width(model) == 1.0  # nothing changed
    universal = SlimmableCNN(num_classes=10, width=8, width_mults=(0.5, 1.0), universal=True)
    with pytest.raises(ValueError, match=r"expected a width in \[0.5, 1\]"):
        set_width(universal, 0.3)
    for bad in (0.0, 1.5, -0.5, True):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            set_width(universal, bad)
    with pytest.raises(ValueError, match="no slimmable layers"):
        set_width(SmallCNN(), 0.5)
    with use_width(model, 0.5):
        assert get_width(model) == 0.5
    assert get_width(model) == 1.0
    set_width(model, 0.5 + 1e-12)  # a float rounding of a listed width is that width
    assert get_width(model) == 0.5
    bn = SwitchableBatchNorm2d(8, (0.5, 1.0))
    bn.width_mult = 0.5
    with pytest.raises(ValueError, match="expected an input with 4 channels"):  # the width and the input disagree
        bn(torch.randn(2, 8, 3, 3))


@pytest.mark.parametrize(("width_mults", "match"), [([], "at least one"), ([0.5, 1.5], r"\(0, 1\]"), ([0.0, 1.0], r"\(0, 1\]"),
                                                    ([-0.25], r"\(0, 1\]"), ([0.5, 0.5], "repeat")])
def test_bad_width_lists_are_refused(width_mults, match):
    with pytest.raises(ValueError, match=match):
        SlimmableCNN(width_mults=width_mults)
    with pytest.raises(ValueError, match=match):
        SlimmableTask(width_mults=width_mults)


def test_task_refuses_bad_settings():
    with pytest.raises(ValueError, match="mode must be one of"):
        SlimmableTask(mode="sliced")
    with pytest.raises(ValueError, match="n_random must be an int >= 0"):
        SlimmableTask(mode="universal", n_random=-1)
    with pytest.raises(ValueError, match="calibration_batches must be an int >= 1"):
        SlimmableTask(mode="universal", calibration_batches=0)


def test_training_loss_is_the_sum_over_widths_with_inplace_distillation(one_thread):
    task = SlimmableTask(width_mults=(0.25, 0.5, 1.0), width=8, inplace_distillation=True)
    x, y = torch.randn(6, 1, 16, 16), torch.randint(0, 10, (6,))
    total = task.training_step((x, y), 0)
    with use_width(task.model, 1.0):
        teacher = task.model(x)
    expected = F.cross_entropy(teacher, y)
    for w in (0.5, 0.25):
        with use_width(task.model, w):
            expected = expected + F.cross_entropy(task.model(x), teacher.softmax(1))
    torch.testing.assert_close(total, expected)
    universal = SlimmableTask(mode="universal", width_mults=(0.25, 0.5, 1.0), n_random=3, width=8)
    widths = universal.training_widths()
    assert widths[:2] == [1.0, 0.25] and len(widths) == 5 and all(0.25 <= w <= 1.0 for w in widths[2:])


def _fit(config, root, *extra):
    return main(["fit", "-c", str(CONFIGS / config), "--trainer.max_steps", "2", "--trainer.limit_train_batches", "2",
                 "--trainer.limit_val_batches", "2", "--trainer.default_root_dir", str(root),
                 "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                 "--model.init_args.width", "4", *extra])


def _logged(root):
    (path,) = Path(root).glob("lightning_logs/version_0/metrics.csv")
    rows = list(csv.DictReader(path.open()))
    return {k: float(v) for row in rows for k, v in row.items() if v not in ("", None)}


@pytest.mark.parametrize(("config", "widths"), [("slimmable_digits.yaml", ["0.25", "0.5", "0.75", "1"]),
                                               ("us_slimmable_digits.yaml", ["0.25", "0.5", "0.75", "1"]),
                                               ("separate_width_digits.yaml", ["1"])])
def test_configs_train_two_steps_and_log_every_width_accuracy(one_thread, tmp_path, config, widths):
    assert _fit(config, tmp_path, "--model.init_args.calibration_batches", "2") == 0
    logged = _logged(tmp_path)
    assert sorted(k[len("val_acc_w"):] for k in logged if k.startswith("val_acc_w")) == sorted(widths)
    assert all(0.0 <= logged[f"val_acc_w{w}"] <= 1.0 for w in widths) and logged["train_loss"] > 0
    if config.startswith("us_"):  # the last validation calibrated every listed width; the checkpoint keeps them
        (checkpoint,) = tmp_path.glob("lightning_logs/version_0/checkpoints/*.ckpt")
        task = SlimmableTask.load_from_checkpoint(checkpoint)
        assert task.model.features[1].calibrated_widths == (0.25, 0.5, 0.75, 1.0)


def test_one_width_alone_from_the_command_line(one_thread, tmp_path):
    assert _fit("separate_width_digits.yaml", tmp_path, "--model.init_args.width_mults", "[0.5]") == 0
    assert [k for k in _logged(tmp_path) if k.startswith("val_acc")] == ["val_acc_w0.5"]

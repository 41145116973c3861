"""Exporting one width of a slimmable network as a plain pruned SmallCNN: equal outputs, the weights-only file
round trip, folding, bad widths, and the input network left as it was."""

import pytest
import torch

from normapps import norm
from normapps.models.pretrained import Preprocessing
from normapps.tasks.efficient import load_model, save_model
from normapps.tasks.efficient.slimmable import (
    SlimmableCNN,
    UniversalBatchNorm2d,
    calibrate,
    export_width,
    get_width,
    use_width,
)

WIDTHS = (0.25, 0.5, 0.75, 1.0)
UNIVERSAL_WIDTHS = (0.25, 0.4, 0.5, 1.0)  # 0.4 lies between the listed widths 0.25 and 0.5: calibrated, not listed
PREPROCESSING = Preprocessing(16, (0.5,), (0.25,), "test")


def _trained_like(universal: bool) -> SlimmableCNN:
    """A slimmable network with non-trivial weights, BN affine parameters and statistics of every width, in eval mode."""
    model = SlimmableCNN(num_classes=10, width=8, width_mults=WIDTHS, universal=universal)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, UniversalBatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    if universal:
        for w in UNIVERSAL_WIDTHS:
            calibrate(model, w, [torch.randn(8, 1, 16, 16) for _ in range(2)])
    return model.eval()


@pytest.mark.parametrize("universal", [False, True], ids=["switchable", "universal"])
def test_exported_network_computes_the_slimmable_outputs_at_every_width(one_thread, universal):
    model = _trained_like(universal)
    x = torch.randn(5, 1, 16, 16)
    for w in UNIVERSAL_WIDTHS if universal else WIDTHS:
        plain, keep, hyper_parameters = export_width(model, w)
        assert not any("Slimmable" in type(m).__name__ or "Switchable" in type(m).__name__ for m in plain.modules())
        assert hyper_parameters["arch"] == "cnn" and hyper_parameters["norm"] == "bn"
        assert all(indices == list(range(len(indices))) for indices in keep.values())  # prefix channels
        with torch.no_grad(), use_width(model, w):
            torch.testing.assert_close(plain(x), model(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("universal", [False, True], ids=["switchable", "universal"])
def test_export_round_trips_through_the_weights_only_file_and_folds(one_thread, tmp_path, universal):
    model = _trained_like(universal)
    plain, keep, hyper_parameters = export_width(model, 0.5)
    path = save_model(tmp_path / "w50.pt", plain, hyper_parameters=hyper_parameters, keep=keep, folded=False, preprocessing=PREPROCESSING)
    loaded = load_model(path)
    assert loaded.keep == keep and not loaded.folded and loaded.preprocessing == PREPROCESSING
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        expected = plain(x)
        torch.testing.assert_close(loaded.model(x), expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(norm.fold(plain)(x), expected, rtol=1e-5, atol=1e-5)


def test_export_leaves_the_input_network_unchanged(one_thread):
    for universal in (False, True):
        model = _trained_like(universal)
        before = {key: value.clone() for key, value in model.state_dict().items()}
        plain, _, _ = export_width(model, 0.5)
        with torch.no_grad():
            for p in plain.parameters():  # the export holds copies, not views of the slimmable weights
                p.add_(1.0)
        assert get_width(model) == 1.0 and not model.training
        after = model.state_dict()
        assert after.keys() == before.keys()
        for key, value in before.items():
            torch.testing.assert_close(after[key], value, rtol=0, atol=0)


def test_bad_or_uncalibrated_widths_are_refused(one_thread):
    switchable = _trained_like(False)
    with pytest.raises(ValueError, match="expected one of 0.25, 0.5, 0.75, 1"):
        export_width(switchable, 0.6)
    universal = _trained_like(True)
    with pytest.raises(ValueError, match=r"expected a width in \[0.25, 1\]"):
        export_width(universal, 0.2)
    with pytest.raises(ValueError, match=r"call calibrate\(model, 0.6, batches\).*calibrated widths: 0.25, 0.4, 0.5, 1"):
        export_width(universal, 0.6)
    for bad in (0.0, 1.5, True):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            export_width(universal, bad)
    assert get_width(universal) == 1.0 and universal.features[1].calibrated_widths == UNIVERSAL_WIDTHS
    with pytest.raises(TypeError, match="expected a SlimmableCNN, got Linear"):
        export_width(torch.nn.Linear(2, 2), 0.5)

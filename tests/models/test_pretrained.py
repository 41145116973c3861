"""normapps.models.pretrained: timm / torchvision classifiers from local weights, and their preprocessing."""

import pytest
import torch
import torchvision
from torch import nn

from normapps.models.pretrained import (
    LUMA,
    Preprocessing,
    build_architecture,
    check_logits,
    default_preprocessing,
    load_pretrained,
    load_weights,
    read_state_dict,
)


def test_preprocessing_standardizes_per_channel():
    prep = Preprocessing(4, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0), "test")
    images = torch.rand(2, 3, 4, 4)
    expected = (images - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(prep(images), expected)
    assert prep.channels == 3


def test_one_channel_preprocessing_takes_the_luma_so_grey_images_keep_their_value():
    prep = Preprocessing(4, (0.2,), (0.5,), "test")
    grey = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(prep(grey.expand(-1, 3, -1, -1)), (grey - 0.2) / 0.5)
    colour = torch.rand(1, 3, 4, 4)
    luma = sum(w * colour[:, c] for c, w in enumerate(LUMA)).unsqueeze(1)
    torch.testing.assert_close(prep(colour), (luma - 0.2) / 0.5)


@pytest.mark.parametrize(("mean", "std", "message"), [((0.1, 0.2), (1.0, 1.0), "1 or 3 values"), ((0.1,), (0.0,), "positive")])
def test_preprocessing_refuses_bad_statistics(mean, std, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing(8, mean, std, "test")


def test_preprocessing_refuses_non_rgb_input():
    with pytest.raises(ValueError, match=r"expected RGB images of shape \(N, 3, S, S\), got \(2, 1, 4, 4\)"):
        Preprocessing(4, (0.0,), (1.0,), "test")(torch.zeros(2, 1, 4, 4))


def test_read_state_dict_accepts_a_state_dict_or_one_under_state_dict_or_model(tmp_path):
    state = {"w": torch.ones(2), "b": torch.zeros(1)}
    for content in (state, {"state_dict": state, "epoch": 3}, {"model": state}):
        torch.save(content, tmp_path / "w.pt")
        assert read_state_dict(tmp_path / "w.pt").keys() == state.keys()


def test_read_state_dict_explains_what_it_found(tmp_path):
    torch.save({"weights": [1, 2], "epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"holds a dict with keys \['weights', 'epoch'\]; expected a state dict"):
        read_state_dict(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read .*junk.pt as weights"):
        read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="weights file .*none.pt does not exist"):
        read_state_dict(tmp_path / "none.pt")


class _Opaque:
    pass


def test_read_state_dict_runs_no_pickled_code(tmp_path):
    torch.save({"w": _Opaque()}, tmp_path / "code.pt")
    with pytest.raises(ValueError, match=r"torch.load\(weights_only=True\) refused it"):
        read_state_dict(tmp_path / "code.pt")


def test_load_weights_summarizes_what_does_not_fit_with_a_head_hint():
    model = torchvision.models.resnet18(num_classes=4)
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    with pytest.raises(ValueError, match=r"file.pt does not fit r18: 2 of another shape \(fc.weight: file \[10, 512\], model \[4, 512\], "
                                         r"fc.bias: file \[10\], model \[4\]\); the file's head \(fc\) has 10 outputs: .*num_classes=10"):
        load_weights(model, state, "file.pt", "r18")


def test_load_weights_names_missing_and_unexpected_keys_and_a_common_prefix():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    wrapped = {f"module.{key}": value for key, value in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"6 missing \(0.weight, 0.bias, 1.weight, \.\.\. \(3 more\)\); 7 unexpected .*"
                                         r"the file's keys carry the prefix 'module.'"):
        load_weights(model, wrapped, "file.pt", "net")


def test_load_weights_accepts_a_state_dict_without_num_batches_tracked():
    source = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    state = {key: value + 1 for key, value in source.state_dict().items() if "num_batches_tracked" not in key}
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    load_weights(model, state, "file.pt", "net")
    torch.testing.assert_close(model[1].running_var, state["1.running_var"])


@pytest.mark.parametrize(
    ("library", "name", "message"),
    [
        ("timm", "resnt18", "unknown timm model 'resnt18'; did you mean 'resnet18'"),
        ("torchvision", "resnt18", "unknown torchvision classifier 'resnt18'; did you mean 'resnet18'"),
        ("torchvision", "fasterrcnn_resnet50_fpn", "(it is not an image classifier)"),
        ("keras", "resnet18", "unknown model library 'keras'"),
    ],
)
def test_unknown_architectures_suggest_close_names(library, name, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_architecture(library, name)


def test_default_preprocessing_of_torchvision_and_timm_models():
    module, code = build_architecture("torchvision", "resnet18", 3)
    assert code == "torchvision.models.get_model('resnet18', weights=None, num_classes=3)"
    prep = default_preprocessing("torchvision", "resnet18", module)
    assert (prep.image_size, prep.mean, prep.std) == (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert default_preprocessing("torchvision", "resnet18", module, image_size=64).image_size == 64
    timm_module, timm_code = build_architecture("timm", "resnet18", 3)
    assert timm_code == "timm.create_model('resnet18', pretrained=False, num_classes=3)"
    timm_prep = default_preprocessing("timm", "resnet18", timm_module)
    assert (timm_prep.image_size, timm_prep.mean) == (224, (0.485, 0.456, 0.406)) and "timm" in timm_prep.origin


def test_load_pretrained_from_a_local_file(tmp_path):
    source = torchvision.models.resnet18(num_classes=3)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "r18.pt")
    classifier = load_pretrained("torchvision:resnet18", tmp_path / "r18.pt", num_classes=3, image_size=32)
    assert classifier.num_classes == 3 and not classifier.module.training
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(classifier.module(classifier.preprocessing(images)), source.eval()(classifier.preprocessing(images)))
    assert classifier.build().state_dict().keys() == source.state_dict().keys()
    with pytest.raises(ValueError, match="expected a model as timm:<name> or torchvision:<name>, got 'resnet18'"):
        load_pretrained("resnet18", tmp_path / "r18.pt")


def test_check_logits_refuses_a_model_that_does_not_classify_the_images():
    prep = Preprocessing(8, (0.0,), (1.0,), "test")
    with pytest.raises(ValueError, match=r"net does not take images of shape \[1, 1, 8, 8\]"):
        check_logits(nn.Linear(3, 2), prep, "net")
    with pytest.raises(ValueError, match=r"net returns a tensor of shape \[1, 1, 8, 8\] for one image; expected class logits"):
        check_logits(nn.Identity(), prep, "net")
    assert check_logits(nn.Sequential(nn.Flatten(), nn.Linear(64, 5)), prep, "net") == 5

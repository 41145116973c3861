"""SmallResNet: shapes, residual structure, selectable normalization, and its use in ClassificationTask."""

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from normapps.models.resnet import SmallResNet
from normapps.tasks import ClassificationTask


def test_shapes_and_widths(one_thread):
    model = SmallResNet(num_classes=7, width=4, in_channels=3, blocks=2)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    assert [len(stage) for stage in model.stages] == [2, 2, 2]
    assert [stage[0].conv2.out_channels for stage in model.stages] == [4, 8, 16]
    assert model.head.in_features == 16
    # only the first block of a stage that changes width or resolution has a projection shortcut
    assert isinstance(model.stages[0][0].shortcut, torch.nn.Identity)
    assert isinstance(model.stages[1][0].shortcut, torch.nn.Sequential)
    assert isinstance(model.stages[1][1].shortcut, torch.nn.Identity)


def test_block_adds_the_shortcut(one_thread):
    model = SmallResNet(width=4).eval()
    block = model.stages[0][0]
    x = torch.randn(2, 4, 8, 8)
    inner = block.norm2(block.conv2(block.relu1(block.norm1(block.conv1(x)))))
    torch.testing.assert_close(block(x), torch.relu(inner + x))


def test_norm_is_selectable():
    model = SmallResNet(width=8, norm="gn")
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    assert model.stem[1].partition.groups == 2


@pytest.mark.parametrize("bad", [{"width": 0}, {"blocks": 0}, {"norm": "not_a_norm"}])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        SmallResNet(**bad)


def test_classification_task_arch_and_gamma_init():
    task = ClassificationTask(arch="resnet", width=4, blocks=2, bn_gamma_init=0.5)
    assert isinstance(task.model, SmallResNet) and len(task.model.stages[0]) == 2
    gammas = torch.cat([m.weight.detach() for m in task.model.modules() if isinstance(m, _BatchNorm)])
    assert torch.all(gammas == 0.5)
    assert type(ClassificationTask(width=4).model).__name__ == "SmallCNN"
    with pytest.raises(ValueError, match="arch"):
        ClassificationTask(arch="vgg")

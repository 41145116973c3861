"""Tests of normapps.norm.registry: names, taxonomy, building layers by name / class / partial."""

import functools

import pytest
import torch
from torch import nn

from normapps import norm
from normapps.norm.activation import GroupNorm

ACTIVATION = "bn ghostbn brn bgn ln in gn pn lrn lcn rmsnorm l1bn frn evonorm_b0 evonorm_s0 switchnorm bin".split()
CONDITIONAL = "cbn cin adain spade smbn".split()


def test_every_activation_method_of_the_survey_is_registered_in_its_family():
    assert set(ACTIVATION) <= set(norm.available("activation"))


def test_every_conditional_method_of_the_survey_is_registered_in_its_family():
    assert set(CONDITIONAL) <= set(norm.available("conditional"))


def test_families_partition_the_registry():
    everything = norm.available()
    by_family = [n for fam in ("activation", "conditional", "whitening", "weight", "gradient")
                 for n in norm.available(fam)]
    assert sorted(everything) == sorted(by_family)
    assert len(set(everything)) == len(everything)


@pytest.mark.parametrize("name", ACTIVATION + CONDITIONAL)
def test_describe_gives_complete_taxonomy_with_paper_and_year(name):
    info = norm.describe(name)
    assert isinstance(info, norm.NormInfo)
    assert info.name == name
    assert info.family == ("conditional" if name in CONDITIONAL else "activation")
    for field in ("partition", "operation", "recovery", "paper"):
        value = getattr(info, field)
        assert isinstance(value, str) and value.strip(), f"{name}.{field} is empty"
    assert isinstance(info.year, int) and 1990 <= info.year <= 2030
    assert str(info.year) in info.paper, "the paper citation should carry its year"


@pytest.mark.parametrize("name", ["bn", "ghostbn", "brn", "bgn", "l1bn", "evonorm_b0", "switchnorm", "bin",
                                  "cbn", "spade", "smbn"])
def test_batch_statistics_flag_set_for_methods_that_use_the_batch(name):
    assert norm.describe(name).batch_statistics


@pytest.mark.parametrize("name", ["ln", "in", "gn", "pn", "rmsnorm", "frn", "evonorm_s0", "lrn", "lcn",
                                  "cin", "adain"])
def test_batch_statistics_flag_clear_for_per_sample_methods(name):
    assert not norm.describe(name).batch_statistics


def test_build_by_name_passes_kwargs():
    layer = norm.build("gn", 12, groups=3)
    assert isinstance(layer, nn.Module)
    assert layer.partition.groups == 3 and layer.num_features == 12


def test_build_accepts_a_class():
    layer = norm.build(nn.BatchNorm2d, 6, momentum=0.3)
    assert isinstance(layer, nn.BatchNorm2d) and layer.num_features == 6 and layer.momentum == 0.3


def test_build_accepts_a_partial():
    layer = norm.build(functools.partial(GroupNorm, groups=2), 6)
    assert isinstance(layer, GroupNorm) and layer.partition.groups == 2
    layer = norm.build(functools.partial(nn.GroupNorm, 3), 6)  # torch's (num_groups, num_channels) order
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == 3 and layer.num_channels == 6


def test_build_accepts_a_registered_class_and_equals_build_by_name():
    x = torch.randn(2, 8, 3, 3)
    a, b = norm.build("gn", 8, groups=4), norm.build(GroupNorm, 8, groups=4)
    torch.testing.assert_close(a(x), b(x))


def test_unknown_method_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown normalization method 'bnn'.*'bn'"):
        norm.build("bnn", 8)
    with pytest.raises(ValueError, match=r"'rmsnorm'"):
        norm.describe("rmsnrom")


def test_unknown_family_is_rejected_with_the_valid_families():
    with pytest.raises(ValueError, match=r"unknown family 'activations'.*activation"):
        norm.available("activations")


def test_bad_kwargs_name_the_method():
    with pytest.raises(TypeError, match=r"'gn'.*group"):
        norm.build("gn", 8, group=4)
    with pytest.raises(TypeError, match=r"'cbn'"):
        norm.build("cbn", 8)  # num_classes missing
    with pytest.raises(TypeError, match=r"'GroupNorm'.*foo"):
        norm.build(functools.partial(GroupNorm, groups=2), 8, foo=1)
    with pytest.raises(TypeError, match=r"'BatchNorm2d'.*foo"):
        norm.build(nn.BatchNorm2d, 8, foo=1)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "8"])
def test_build_rejects_non_positive_or_non_int_width(bad):
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        norm.build("bn", bad)


def test_build_rejects_non_callable():
    with pytest.raises(TypeError, match="expected a method name, a class or a partial"):
        norm.build(42, 8)


def test_register_rejects_duplicates_and_unknown_families():
    with pytest.raises(ValueError, match="already registered"):
        norm.register("bn", family="activation", partition="p", operation="o", recovery="r",
                      paper="x", year=2020)(nn.Identity)
    with pytest.raises(ValueError, match="family must be one of"):
        norm.register("brand_new", family="activations", partition="p", operation="o", recovery="r",
                      paper="x", year=2020)
    assert "brand_new" not in norm.available()


def test_signature_lists_the_arguments_build_accepts():
    assert "groups" in norm.signature("gn").parameters
    assert "groups" not in norm.signature("bn").parameters
    with pytest.raises(ValueError, match="unknown normalization method"):
        norm.signature("gnn")

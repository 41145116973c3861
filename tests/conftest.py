"""Shared test set-up: every test starts from the same torch seed, so failures reproduce."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield

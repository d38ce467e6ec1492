"""Shared fixtures: small synthetic streams (generated once per session)."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing them when tests run subprocesses.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def synthetic():
    from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset

    return SyntheticDataset(SyntheticConfig(size=4000, seed=0))

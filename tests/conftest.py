import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _testutil import seed_from  # noqa: E402

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "lowbit",
        deadline=None,
        max_examples=25,
        derandomize=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.register_profile(
        "lowbit-ci",
        deadline=None,
        max_examples=25,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.register_profile(
        "lowbit-long",
        deadline=None,
        max_examples=500,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "lowbit"))
except ImportError:  # hypothesis is optional; property tests skip themselves
    pass


def cuda_available() -> bool:
    return torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: test needs a CUDA GPU (skipped when none is available)")
    config.addinivalue_line("markers", "slow: test takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="CUDA not available (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def seed(request) -> int:
    """A per-test seed derived from the test id: deterministic per test, different across tests."""
    s = seed_from(request.node.nodeid)
    torch.manual_seed(s)
    return s


@pytest.fixture
def gen(seed) -> torch.Generator:
    """A CPU torch.Generator seeded per test (see `seed`)."""
    return torch.Generator().manual_seed(seed)

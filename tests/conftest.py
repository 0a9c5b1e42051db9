"""tests/conftest.py: pytest setup of the lowbit tests: hypothesis profiles (HYPOTHESIS_PROFILE),
the cuda/slow markers, and per-test seeding (torch's global RNG for every test, `seed`/`gen`)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _testutil import seed_from  # noqa: E402

try:
    from hypothesis import HealthCheck, settings

    _common = dict(deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    # "lowbit" (the default) and "lowbit-ci": derandomized, so every run draws the same examples
    # (the draws depend on the hypothesis version and the test, never on the run or on torch);
    # "lowbit-explore" and "lowbit-long" draw new examples each run (opt-in fuzzing).
    settings.register_profile("lowbit", max_examples=25, derandomize=True, database=None, **_common)
    settings.register_profile("lowbit-ci", max_examples=25, derandomize=True, database=None,
                              **_common)
    settings.register_profile("lowbit-explore", max_examples=25, derandomize=False, **_common)
    settings.register_profile("lowbit-long", max_examples=500, derandomize=False, **_common)
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


@pytest.fixture(autouse=True)
def _seed_torch_per_test(request):
    """Every test starts from torch's global RNG seeded from its own id, so a test that draws
    without a generator is deterministic whichever tests ran before it. (Tests must still pass
    for any draw: torch versions may produce different streams from one seed.)"""
    torch.manual_seed(seed_from(request.node.nodeid))


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

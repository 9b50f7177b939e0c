import jax
import pytest


@pytest.fixture
def x64():
    """Runs a test with float64 enabled, leaving the default off elsewhere."""
    with jax.enable_x64(True):
        yield

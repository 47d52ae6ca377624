"""Fixtures shared by every test folder; the helpers they use live in helpers.py."""

import pytest
from helpers import encode, real_pair, start_server


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """In-process forward passes use one thread: two OpenMP threads wait on each other whenever other work on
    the machine deschedules one (beside a training run that made model tests five times slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def server():
    """One server with the default settings for the whole session (tests must not change its state)."""
    handle = start_server()
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def small_pair() -> tuple[bytes, bytes]:
    """A 320×240 real composite as JPEG bytes and its mask as PNG bytes."""
    composite, mask = real_pair(320, 240)
    return encode(composite, "JPEG", quality=90), encode(mask, "PNG")

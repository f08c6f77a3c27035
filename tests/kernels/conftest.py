"""Kernel tests run on the GPU with compiled Triton where there is one, else on the CPU in Triton's
interpreter (which the top-level conftest switches on).

On a GPU machine without the service's dependencies they run alone:
`python -m pytest tests/kernels --confcutdir=tests/kernels`.
"""

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

import os

import pytest
import torch

import maskext

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA device")),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def pytest_report_header(config):
    return (f"maskext: torch {torch.__version__}, CUDA kernels built: {maskext.cuda_built()}, "
            f"CUDA device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}, "
            f"MASKEXT_EXPECT_CUDA={os.environ.get('MASKEXT_EXPECT_CUDA', '0')}")

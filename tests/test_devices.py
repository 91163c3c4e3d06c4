"""wmpo_core.devices.choose_device: 'auto', named devices, and one-line refusals."""

import pytest
import torch
from wmpo_core.devices import DeviceError, choose_device


def test_auto_is_cuda_when_visible_else_cpu(monkeypatch):
    monkeypatch.delenv("WMPO_DEVICE", raising=False)
    assert choose_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert choose_device("auto") == choose_device()
    monkeypatch.setenv("WMPO_DEVICE", "cpu")
    assert choose_device("auto") == torch.device("cpu")
    assert choose_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gpu", "'gpu' is not a torch device"),
        ("cuda:99", "'cuda:99'"),
        ("meta", "device type 'meta' is not supported"),
    ],
)
def test_bad_or_absent_devices_are_refused_with_one_line(name, message):
    with pytest.raises(DeviceError, match=message) as info:
        choose_device(name)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(monkeypatch):
    with pytest.raises(DeviceError, match="CUDA is not available on this machine"):
        choose_device("cuda")
    monkeypatch.setenv("WMPO_DEVICE", "cuda")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        choose_device("auto")

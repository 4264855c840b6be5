"""`mikit.setup()` picks the mode, seeds everything and says what the notebook runs on."""

import os

import pytest
import torch

import mikit
from mikit.session import choose_device, choose_mode


def test_forced_offline_mode_and_printout(monkeypatch, capsys):
    monkeypatch.setenv("MIKIT_MODE", "offline")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    session = mikit.setup()
    out = capsys.readouterr().out
    assert session.mode == "offline" and session.lm == "smollm2-135m" and session.toy == "attn-only-2l"
    assert "device: cpu" in out and "mode: offline" in out and "smollm2-135m" in out
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # no hub call may hang later


def test_full_mode_uses_gpt2(monkeypatch):
    monkeypatch.setenv("MIKIT_MODE", "full")
    assert mikit.setup(verbose=False).lm == "gpt2-small"


def test_auto_mode_is_offline_without_gpu_or_hub(monkeypatch):
    monkeypatch.delenv("MIKIT_MODE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert choose_mode() == "offline"


def test_bad_mode_is_one_sentence(monkeypatch):
    monkeypatch.setenv("MIKIT_MODE", "turbo")
    with pytest.raises(ValueError, match="MIKIT_MODE must be one of offline, full, not 'turbo'"):
        choose_mode()


def test_setup_seeds_torch(monkeypatch):
    monkeypatch.setenv("MIKIT_MODE", "offline")
    mikit.setup(seed=3, verbose=False)
    first = torch.rand(3)
    mikit.setup(seed=3, verbose=False)
    assert torch.equal(first, torch.rand(3))


def test_device_is_cuda_when_there_is_a_gpu_else_cpu(monkeypatch):
    monkeypatch.delenv("MIKIT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # An Apple GPU is never picked unasked (TransformerLens issue 1178).
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert choose_device() == "cpu"


def test_mps_only_when_asked_and_with_a_warning(monkeypatch, capsys):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setenv("MIKIT_DEVICE", "mps")
    assert choose_device() == "mps"
    assert "silently wrong logits" in capsys.readouterr().out
    monkeypatch.delenv("MIKIT_DEVICE")
    assert choose_device("mps") == "mps"
    assert "issue 1178" in capsys.readouterr().out


@pytest.mark.parametrize(
    "requested, message",
    [("cuda", "PyTorch sees no CUDA GPU"), ("mps", "no Apple MPS backend"), ("tpu", "device must be 'cpu'")],
)
def test_unusable_device_is_one_sentence(monkeypatch, requested, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=message):
        choose_device(requested)


def test_setup_reports_the_device_it_was_given(monkeypatch, capsys):
    monkeypatch.setenv("MIKIT_MODE", "offline")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert mikit.setup(device="mps").device == "mps"
    assert "device: mps" in capsys.readouterr().out

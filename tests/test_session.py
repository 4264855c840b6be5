"""`mikit.setup()` picks the mode, seeds everything and says what the notebook runs on."""

import os

import pytest
import torch

import mikit
from mikit.session import choose_mode


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

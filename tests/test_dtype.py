"""--dtype: auto follows the bf16 probe and a bad value is a one-line error (PPO's ratio, exactly 1 in bf16
too: tests/test_train_ppo.py)."""

import pytest

import train_ppo
import train_pretrain
from minigpt import training
from minigpt.cli import UserError, parse_config


@pytest.mark.parametrize("speedup,expected", [(0.4, "float32"), (1.1, "float32"), (5.0, "bfloat16")])
def test_auto_follows_the_probe(monkeypatch, speedup, expected):
    monkeypatch.setattr(training, "bf16_speedup", lambda device: speedup)
    assert training.resolve_dtype("auto", "cpu") == expected
    assert training.resolve_dtype("float32", "cpu") == "float32"     # an explicit choice is never overridden
    assert training.resolve_dtype("bfloat16", "cpu") == "bfloat16"


def test_the_probe_runs_once_per_process():
    first = training.bf16_speedup("cpu")
    assert first > 0 and training.bf16_speedup("cpu") == first


@pytest.mark.parametrize("cls", [train_pretrain.Config, train_ppo.Config])
def test_bad_dtype_is_a_clear_error_before_anything_loads(cls):
    with pytest.raises(UserError, match="--dtype=float16: expected auto, float32 or bfloat16"):
        parse_config(cls, ["--dtype=float16"])

"""--dtype: auto follows the bf16 probe, a bad value is a one-line error, and PPO's ratio is exactly 1 in bf16."""

from types import SimpleNamespace

import pytest
import torch

import train_ppo
import train_pretrain
from minigpt import training
from minigpt.cli import UserError, parse_config
from minigpt.model import GPT, RewardModel
from test_train_ppo import make_cfg, rolled_out, tiny  # noqa: F401  (tiny: the fixture)


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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ppo_ratio_is_exactly_one_on_the_first_minibatch(tiny, dtype):
    cfg = make_cfg(dtype=dtype)
    policy, value_model = GPT(tiny.config).eval(), RewardModel(tiny.config).eval()
    policy.load_state_dict(tiny.policy.state_dict())
    value_model.load_state_dict(tiny.reward_model.state_dict())
    batch = rolled_out(SimpleNamespace(**{**vars(tiny), "policy": policy, "reward_model": value_model}), cfg)
    opt_p = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, eps=1e-5)
    opt_v = torch.optim.AdamW(value_model.parameters(), lr=cfg.value_lr, eps=1e-5)
    steps = train_ppo.ppo_update(policy, value_model, opt_p, opt_v, batch, cfg, torch.Generator().manual_seed(0))
    assert steps[0]["ratio_mean"] == 1.0 and steps[0]["max_abs_log_ratio"] == 0.0

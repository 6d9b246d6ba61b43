"""Checkpoints: atomic writes, weights-only loading, clear errors for the wrong kind of folder."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

from minigpt.checkpoint import (load_checkpoint, load_model, rng_state, save_checkpoint, save_model,
                                set_rng_state)
from minigpt.cli import UserError
from minigpt.model import GPT, GPTConfig, RewardModel
from minigpt.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train("hello world, the cat sat on the mat. 1 + 2 = 3. 你好 " * 20, 300)


def tiny(tokenizer):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16))


def test_atomic_write_keeps_previous_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"step": 2, "bad": Boom()})
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]      # no temporary file left behind


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "model.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Exploit()}, f)
    with pytest.raises(UserError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_model_round_trip_and_wrong_kind(tmp_path, tokenizer):
    model = tiny(tokenizer)
    save_model(tmp_path / "lm", model, tokenizer, "lm", {"lr": 1.0}, step=7)
    loaded, tok, ckpt = load_model(str(tmp_path / "lm"), kind="lm")
    assert ckpt["step"] == 7 and tok.encode("hello 你好") == tokenizer.encode("hello 你好")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(UserError, match="expected a reward model"):
        load_model(str(tmp_path / "lm"), kind="reward")
    save_model(tmp_path / "rm", RewardModel.from_gpt(model), tokenizer, "reward")
    with pytest.raises(UserError, match="expected a language model"):
        load_model(str(tmp_path / "rm"), kind="lm")
    rm, _, _ = load_model(str(tmp_path / "rm"), kind="reward")
    assert isinstance(rm, RewardModel)
    with pytest.raises(UserError, match="no such checkpoint folder"):
        load_model(str(tmp_path / "missing"))


def test_tokenizer_that_does_not_fit_the_model(tmp_path, tokenizer):
    save_model(tmp_path / "lm", tiny(tokenizer), tokenizer, "lm")
    other = Tokenizer.train("some other text entirely, with other merges " * 50, 280)
    assert other.vocab_size != tokenizer.vocab_size
    other.save(str(tmp_path / "lm" / "tokenizer.json"))
    with pytest.raises(UserError, match="wrong tokenizer for this checkpoint"):
        load_model(str(tmp_path / "lm"))


def test_rng_state_round_trip(tmp_path):
    state = rng_state()
    save_checkpoint(tmp_path / "r.pt", {"rng": state})
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first

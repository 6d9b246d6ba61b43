"""Where a fine-tune starts: the model and tokenizer of train_sft.py's --init (a stage folder, or a Hugging
Face GPT-2 folder), and rebuild, a copy of a GPT with its config changed: dropout for training (train_sft.py,
train_rm.py), or more vocabulary rows (GPT-2 has no pad token)."""

import dataclasses
import os
import sys

import torch

from minigpt.checkpoint import load_model
from minigpt.cli import UserError
from minigpt.model import GPT
from minigpt.tokenizer import Tokenizer


def load_init(init, tokenizer_name=""):
    """The model to fine-tune and its tokenizer: a stage folder, or a Hugging Face GPT-2 folder (which needs
    tokenizer_name="gpt2", train_sft.py's --tokenizer=gpt2)."""
    if os.path.isfile(os.path.join(init, "model.pt")):
        if tokenizer_name:
            raise UserError(f"--tokenizer={tokenizer_name}: {init} is a stage folder and brings its own "
                            "tokenizer")
        if not os.path.isfile(os.path.join(init, "summary.json")):
            print(f"warning: {init} has no summary.json: its stage did not finish", file=sys.stderr)
        model, tokenizer, _ = load_model(init, kind="lm")
        return model, tokenizer
    if os.path.isfile(os.path.join(init, "config.json")):
        if tokenizer_name != "gpt2":
            raise UserError(f"{init} is a Hugging Face folder: pass --tokenizer=gpt2")
        try:
            model = GPT.from_pretrained(init)
        except ValueError as e:
            raise UserError(str(e).splitlines()[0]) from None
        return model, Tokenizer.gpt2()
    if not os.path.isdir(init):
        raise UserError(f"--init={init}: no such folder (run train_pretrain.py first)")
    raise UserError(f"--init={init}: neither a stage folder (model.pt) nor a Hugging Face folder "
                    "(config.json)")


def rebuild(model, **changes):
    """A copy of `model` with GPTConfig fields changed (dropout, a larger vocabulary). New vocabulary rows
    (GPT-2 has no pad token; ours is one id past its vocabulary) start at the mean embedding."""
    config = dataclasses.replace(model.config, **changes)
    state = model.state_dict()
    extra = config.vocab_size - model.config.vocab_size
    if extra > 0:
        wte = state["transformer.wte.weight"]                                     # (V, C)
        wte = torch.cat([wte, wte.mean(0, keepdim=True).expand(extra, -1)])       # (V + extra, C)
        state["transformer.wte.weight"] = state["lm_head.weight"] = wte          # tied
    new = GPT(config)
    new.load_state_dict(state)
    return new

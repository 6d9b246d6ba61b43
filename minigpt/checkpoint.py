"""Stage folders and checkpoints: written atomically, loaded safely.

A stage folder (out/pretrain, out/sft, out/rm, out/ppo ...) holds
    model.pt       the weights to use next: {"kind", "model_config", "model", "step", "config", "vocab_size"}
    last.pt        everything needed to resume: + optimizer, RNG states, data position
    tokenizer.json the tokenizer the weights were trained with
    config.json    the script's config, for the reader
    metrics.jsonl  one JSON line per logged step, plus PNG plots
    summary.json   written last: its presence means the stage finished

Every file is written to a temporary name in the same folder and moved into place with
os.replace, so a kill at any moment leaves the previous version intact. Every torch.load uses
weights_only=True: a checkpoint is data, and loading one never runs code.
"""

import dataclasses
import json
import os
import pickle
import random
import tempfile

import numpy as np
import torch

from minigpt.cli import UserError


def _atomic_write(path, write):
    """Call write(f) on a temporary file beside `path`, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(path, obj):
    _atomic_write(path, lambda f: torch.save(obj, f))


def write_text(path, text):
    _atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def load_checkpoint(path):
    """torch.load with weights_only=True; every failure is a one-line UserError naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise UserError(f"{path}: refused to load: not a plain weights checkpoint ({first[:160]})") from None
    except Exception as e:  # truncated or not a checkpoint at all
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first})") from None


def config_dict(config):
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})


def model_state(model):
    """The state dict of a model, unwrapped from DistributedDataParallel / torch.compile if needed."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    return model.state_dict()


def save_model(folder, model, tokenizer, kind, config=None, step=0, name="model.pt", extra=None):
    """Write the weights (and tokenizer) a later stage loads with load_model."""
    from minigpt.model import RewardModel

    core = getattr(getattr(model, "module", model), "_orig_mod", getattr(model, "module", model))
    gpt = core.gpt if isinstance(core, RewardModel) else core
    obj = {
        "kind": kind,
        "model_config": dataclasses.asdict(gpt.config),
        "model": model_state(model),
        "step": step,
        "config": config_dict(config),
        "vocab_size": tokenizer.vocab_size,
        **(extra or {}),
    }
    os.makedirs(folder, exist_ok=True)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    save_checkpoint(os.path.join(folder, name), obj)


def load_tokenizer(folder):
    from minigpt.tokenizer import Tokenizer

    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        raise UserError(f"{path}: tokenizer not found (is {folder} a stage folder?)")
    try:
        return Tokenizer.load(path)
    except ValueError as e:
        raise UserError(str(e).splitlines()[0]) from None


def load_model(folder, kind="lm", device="cpu", name="model.pt"):
    """Load a stage folder's model -> (model, tokenizer, checkpoint dict). kind is "lm" or "reward"."""
    from minigpt.model import GPT, GPTConfig, RewardModel

    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such checkpoint folder")
    ckpt = load_checkpoint(os.path.join(folder, name))
    if not isinstance(ckpt, dict) or "kind" not in ckpt or "model" not in ckpt:
        raise UserError(f"{os.path.join(folder, name)}: not a minigpt checkpoint")
    if ckpt["kind"] != kind:
        want = {"lm": "a language model (policy)", "reward": "a reward model"}[kind]
        raise UserError(f"{folder}: holds a {ckpt['kind']!r} checkpoint, expected {want}")
    tokenizer = load_tokenizer(folder)
    config = GPTConfig(**ckpt["model_config"])
    if tokenizer.vocab_size != ckpt.get("vocab_size", tokenizer.vocab_size):
        raise UserError(f"{folder}: tokenizer.json has {tokenizer.vocab_size} tokens but the weights were "
                        f"trained with {ckpt['vocab_size']}: wrong tokenizer for this checkpoint")
    if tokenizer.vocab_size > config.vocab_size:
        raise UserError(f"{folder}: tokenizer has {tokenizer.vocab_size} tokens but the model only "
                        f"{config.vocab_size}")
    model = GPT(config) if kind == "lm" else RewardModel(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{folder}: weights do not match the model config "
                        f"({str(e).splitlines()[0][:120]})") from None
    if device == "auto":
        from minigpt.training import pick_device
        device = pick_device(device)
    return model.to(device), tokenizer, ckpt


# A run's files: any of them in out_dir means a run was (or is being) written there.
RUN_FILES = ("model.pt", "last.pt", "summary.json")


def check_out_dir(out_dir, resume, force):
    """Refuse, before any work, to train into a folder holding a run, unless told to resume or overwrite."""
    if resume or force:
        return
    if any(os.path.exists(os.path.join(out_dir, name)) for name in RUN_FILES):
        raise UserError(f"{out_dir} holds a run already: --resume to continue it, --force to overwrite it, "
                        "or another --out_dir")


def load_resumed(module, state, path):
    """module.load_state_dict(state) for a resume; last.pt of another architecture is a one-line UserError."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        # "Error(s) in loading state_dict for GPT:\n\tsize mismatch for ...": the first mismatch says enough
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise UserError(f"{path} was saved by a different model ({detail[:160]}); drop --resume or use the "
                        "same settings") from None


def check_same_tokenizer(a, b, what_a, what_b):
    """Two models trained with different vocabularies cannot be compared token by token."""
    if a.vocab_size != b.vocab_size or a.encode("Hello, 你好 123") != b.encode("Hello, 你好 123"):
        raise UserError(f"{what_a} and {what_b} use different tokenizers")


# --- random number generators: everything needed for exact resume --------------------------

def rng_state():
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state):
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])

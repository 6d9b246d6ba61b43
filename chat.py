"""Talk to a checkpoint (the seed's last step, 部署 / deployment): tokens stream as they are sampled.

    python chat.py --model=out/ppo                        # interactive; /quit or Ctrl-D to leave
    python chat.py --compare out/sft out/ppo              # every prompt answered by both, one after the other
    python chat.py --model=out/sft --prompt="计算2+2"      # answer once and exit (scriptable)

Interactive mode keeps the conversation (each model its own answers): every question is asked with the turns
before it (minigpt/data.py's chat template), the oldest dropped when they no longer fit the context. /reset
starts over, /system TEXT sets a system message (/system alone clears it). Every stage trained on the world's
conversations too (minigpt/dialogues.py: a follow-up after one earlier turn, a system message that sets the
format), so a follow-up such as "And two of them?" means something to them. --prompt is one single-turn
question.
"""

import os
import sys
from dataclasses import dataclass, field

import torch

from minigpt.checkpoint import check_same_tokenizer, load_model
from minigpt.cli import UserError, check, run
from minigpt.data import fit_conversation
from minigpt.sampling import generate
from minigpt.training import autocast, check_dtype, pick_device


@dataclass
class Config:
    model: str = field(default="out/ppo", metadata={"help": "stage folder of the model to talk to"})
    compare: list = field(default_factory=list, metadata={
        "help": "several stage folders: each answers every prompt"})
    prompt: str = field(default="", metadata={"help": "answer this one instruction and exit"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (0 = greedy)"})
    top_k: int = field(default=0, metadata={"help": "keep only the k most likely tokens (0 = off)"})
    top_p: float = field(default=0.95, metadata={
        "help": "nucleus sampling: smallest set with this probability mass"})
    max_new_tokens: int = field(default=48, metadata={"help": "longest answer in tokens"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})
    dtype: str = field(default="auto", metadata={
        "help": "auto (bf16 autocast where this device's bf16 matmul is clearly faster), float32 or "
                "bfloat16"})

    def validate(self):
        check_dtype(self.dtype)
        check(self.temperature >= 0, f"--temperature must be >= 0, got {self.temperature}")
        check(self.top_k >= 0, f"--top_k must be >= 0, got {self.top_k}")
        check(0 < self.top_p <= 1, f"--top_p must be in (0, 1], got {self.top_p}")
        check(self.max_new_tokens > 0, f"--max_new_tokens must be > 0, got {self.max_new_tokens}")


def answer(model, tokenizer, conversation, cfg, generator, label=""):
    """Sample one answer to a conversation [(role, text), ...] ending with the user's message, printing each
    piece of text as soon as it decodes to whole characters -> (answer text, oldest turns dropped to fit)."""
    room = model.config.block_size - cfg.max_new_tokens
    try:
        prompt, dropped = fit_conversation(tokenizer, conversation, room)
    except ValueError as e:
        raise UserError(f"{e} (this model's context of {model.config.block_size} tokens less "
                        f"--max_new_tokens={cfg.max_new_tokens})") from None
    sampled, shown = [], ""
    print(label, end="", flush=True)

    def on_token(token, logits):
        nonlocal shown
        t = token.item()
        if t in (tokenizer.eos_id, tokenizer.pad_id):
            return
        sampled.append(t)
        text = tokenizer.decode_streamed(sampled)  # whole characters only, trailing spaces held back
        print(text[len(shown):], end="", flush=True)
        shown = text

    with autocast(str(next(model.parameters()).device), cfg.dtype):
        generate(model, [prompt], cfg.max_new_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                 temperature=cfg.temperature, top_k=cfg.top_k or None,
                 top_p=cfg.top_p if cfg.top_p < 1 else None, generator=generator, on_token=on_token)
    final = tokenizer.decode_streamed(sampled, final=True)
    print(final[len(shown):], flush=True)
    return final, dropped


def main(cfg):
    device = pick_device(cfg.device)
    folders = cfg.compare or [cfg.model]
    if not cfg.compare and cfg.model == Config.model and not os.path.isdir(cfg.model):   # no run yet
        raise UserError(f"{cfg.model}: no such checkpoint folder: run python pipeline.py first (or "
                        "pipeline.py --preset=small, then --model=out/small/ppo), or pass --model=folder")
    models = []
    for folder in folders:
        model, tokenizer, _ = load_model(folder, kind="lm", device=device)
        models.append((folder, model.eval(), tokenizer))
    for folder, _, tokenizer in models[1:]:
        check_same_tokenizer(models[0][2], tokenizer, models[0][0], folder)
    # each model its own random stream, all seeded alike: two identical checkpoints give identical answers
    generators = [torch.Generator(device=device).manual_seed(cfg.seed) for _ in models]
    width = max(len(f) for f in folders)

    histories = [[] for _ in models]     # per model: [("user", q), ("assistant", its answer), ...]
    system = []                            # [("system", text)] or []

    def reply(question, keep=True):
        for (folder, model, tokenizer), generator, history in zip(models, generators, histories):
            label = f"[{folder:>{width}}] " if len(models) > 1 else ""
            text, dropped = answer(model, tokenizer, system + history + [("user", question)], cfg, generator,
                                   label)
            if dropped:
                print(f"({folder}: the {dropped} oldest turn(s) no longer fit the context: dropped)")
            if keep:
                history[:] = history[2 * dropped:] + [("user", question), ("assistant", text)]

    if cfg.prompt:
        reply(cfg.prompt, keep=False)
        return
    print(f"chatting with {', '.join(folders)} (temperature {cfg.temperature}); /reset starts over, "
          "/system TEXT sets a system message, /quit or Ctrl-D leaves")
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            break
        line = line.strip()
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            for history in histories:
                history.clear()
            print("(a new conversation)")
        elif line == "/system" or line.startswith("/system "):
            text = line[len("/system"):].strip()
            system[:] = [("system", text)] if text else []
            print(f"(system message: {text!r})" if text else "(no system message)")
        elif line:
            try:
                reply(line)
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)

if __name__ == "__main__":
    run(main, Config)

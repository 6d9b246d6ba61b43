"""Talk to a checkpoint (the seed's last step, 部署 / deployment): tokens stream as they are sampled.

    python chat.py --model=out/ppo                        # interactive; /quit or Ctrl-D to leave
    python chat.py --compare out/sft out/ppo              # every prompt answered by both, one after the other
    python chat.py --model=out/sft --prompt="计算2+2"      # answer once and exit (scriptable)
"""

import os
import sys
from dataclasses import dataclass, field

import torch

from minigpt.checkpoint import check_same_tokenizer, load_model
from minigpt.cli import UserError, check, run
from minigpt.respond import encode_prompts
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
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 autocast where this device's bf16 "
                                                         "matmul is clearly faster), float32 or bfloat16"})

    def validate(self):
        check_dtype(self.dtype)
        check(self.temperature >= 0, f"--temperature must be >= 0, got {self.temperature}")
        check(self.top_k >= 0, f"--top_k must be >= 0, got {self.top_k}")
        check(0 < self.top_p <= 1, f"--top_p must be in (0, 1], got {self.top_p}")
        check(self.max_new_tokens > 0, f"--max_new_tokens must be > 0, got {self.max_new_tokens}")


def answer(model, tokenizer, instruction, cfg, generator, label=""):
    """Sample one answer, printing each piece of text as soon as it decodes to whole characters."""
    room = model.config.block_size - cfg.max_new_tokens
    n_prompt = len(encode_prompts(tokenizer, [instruction], 10 ** 9, 1)[0])
    if n_prompt > room:
        raise UserError(f"prompt is {n_prompt} tokens; this model's context leaves room for {room} "
                        f"with --max_new_tokens={cfg.max_new_tokens}")
    prompt = encode_prompts(tokenizer, [instruction], model.config.block_size, cfg.max_new_tokens)
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
        generate(model, prompt, cfg.max_new_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                 temperature=cfg.temperature, top_k=cfg.top_k or None,
                 top_p=cfg.top_p if cfg.top_p < 1 else None, generator=generator, on_token=on_token)
    final = tokenizer.decode_streamed(sampled, final=True)
    print(final[len(shown):], flush=True)
    return final


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

    def reply(instruction):
        for (folder, model, tokenizer), generator in zip(models, generators):
            label = f"[{folder:>{width}}] " if len(models) > 1 else ""
            answer(model, tokenizer, instruction, cfg, generator, label=label)

    if cfg.prompt:
        reply(cfg.prompt)
        return
    print(f"chatting with {', '.join(folders)} (temperature {cfg.temperature}); /quit or Ctrl-D to leave")
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            break
        line = line.strip()
        if line in ("/quit", "/exit"):
            break
        if line:
            try:
                reply(line)
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)


if __name__ == "__main__":
    run(main, Config)

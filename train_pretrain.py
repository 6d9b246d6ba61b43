"""Stage 1: pretraining (预训练). Train a BPE tokenizer on the corpus (on the built-in world, plus the SFT
training prompts in the chat template: see bpe_text), then a GPT from scratch to
predict the next token. On the built-in world the corpus states the world's facts in plain
sentences, so the model learns *what* is true here; SFT later teaches it *how to answer*.

    python train_pretrain.py                      # the world's corpus, ~6 minutes on 2 CPU cores
    python train_pretrain.py --data=my_texts/     # your own .txt file or folder
    torchrun --standalone --nproc_per_node=2 train_pretrain.py   # data parallel
"""

import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from minigpt.checkpoint import (config_dict, load_model, load_resumed, load_tokenizer, model_state, rng_state,
                                save_checkpoint, save_model, set_rng_state, write_json)
from minigpt.cli import UserError, check, run
from minigpt.data import as_conversation, lm_windows, load_text, render_conversation
from minigpt.losses import sft_loss
from minigpt.model import GPT, GPTConfig
from minigpt.sampling import generate
from minigpt.tokenizer import Tokenizer
from minigpt.training import (all_reduce_mean, autocast, check_dtype, cleanup_distributed, cosine_lr,
                              exit_interrupted, make_adamw, open_stage, plot_metrics, read_metrics,
                              resolve_dtype, set_lr, start_stage, step_optimizers)
from minigpt.world import World


@dataclass
class Config:
    out_dir: str = field(default="out/pretrain", metadata={"help": "stage folder to write"})
    data: str = field(default="", metadata={
        "help": "a .txt file or folder of them; empty = the built-in world's corpus"})
    world_seed: int = field(default=0, metadata={"help": "seed of the built-in instruction world"})
    seed: int = field(default=1337, metadata={"help": "seed for initialisation and data order"})
    # tokenizer
    vocab_size: int = field(default=2048, metadata={
        "help": "BPE vocabulary size, the two special tokens included"})
    tokenizer: str = field(default="", metadata={
        "help": "empty = train our BPE on the corpus; gpt2 = GPT-2's 50,257 tokens (tiktoken downloads them "
                "once); or a tokenizer.json"})
    tokenizer_chars: int = field(default=1_000_000, metadata={
        "help": "characters of the corpus the BPE is trained on (the world's SFT prompts add up to a fifth "
                "more)"})
    # model
    n_layer: int = field(default=4, metadata={"help": "transformer blocks"})
    n_head: int = field(default=4, metadata={"help": "attention heads"})
    n_embd: int = field(default=128, metadata={"help": "embedding width"})
    block_size: int = field(default=128, metadata={"help": "context length in tokens"})
    dropout: float = field(default=0.0, metadata={"help": "dropout rate"})
    flash: bool = field(default=True, metadata={
        "help": "fused scaled_dot_product_attention instead of the written-out formula"})
    # optimisation
    batch_size: int = field(default=16, metadata={"help": "sequences per micro-batch per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_steps: int = field(default=2400, metadata={
        "help": "optimizer steps (the lexicon is learnt by ~1,000, sums of two digits only by ~2,000)"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decays to this fraction of lr"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm (0 = off)"})
    # bookkeeping
    eval_interval: int = field(default=100, metadata={"help": "steps between validation + checkpoint"})
    eval_batches: int = field(default=8, metadata={"help": "validation batches per evaluation"})
    log_interval: int = field(default=20, metadata={"help": "steps between progress lines"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    dtype: str = field(default="auto", metadata={
        "help": "auto (bf16 autocast where this device's bf16 matmul is clearly faster), float32 or "
                "bfloat16"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    resume: bool = field(default=False, metadata={"help": "continue from out_dir/last.pt"})
    force: bool = field(default=False, metadata={"help": "overwrite a run already in out_dir"})

    def validate(self):
        check_dtype(self.dtype)
        for key in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum",
                    "max_steps", "eval_interval", "eval_batches", "log_interval", "tokenizer_chars"):
            check(getattr(self, key) > 0, f"--{key} must be > 0, got {getattr(self, key)}")
        check(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        check(self.n_embd % self.n_head == 0,
              f"--n_embd ({self.n_embd}) must be divisible by --n_head ({self.n_head})")
        check(self.vocab_size >= 258,
              f"--vocab_size must be >= 258 (256 bytes + 2 special tokens), got {self.vocab_size}")
        check(self.warmup_steps >= 0 and self.grad_clip >= 0, "--warmup_steps and --grad_clip must be >= 0")


def get_batch(tokens, block_size, global_batch, rank, world_size, generator):
    """Random windows of the token stream, x (B, T) and the next tokens y (B, T). The *global* batch is drawn
    with a generator shared by all ranks and each rank takes its own slice, so N processes see exactly what
    one process with N times the batch would see."""
    x, y = lm_windows(tokens, block_size, global_batch, generator)
    return x[rank::world_size], y[rank::world_size]


def bpe_text(train_text, n_chars, world=None):
    """The text the BPE is trained on: the corpus's first n_chars characters and, on the built-in world, its
    SFT training prompts and conversations in the chat template (at most n_chars / 5 of them, so the corpus
    still decides most merges).

    Trained on the corpus alone, the BPE splits "### Instruction:" and "Translate" into letters (the corpus
    never says them): a test prompt with its answer took 42 tokens; with the prompts it takes 22, so every
    later stage runs on half the tokens. (Real tokenizers are trained on text that includes chat-formatted
    data for the same reason.) Only training prompts: no test prompt is seen."""
    if world is None:
        return train_text[:n_chars]
    tasks = world.split("sft_train")                     # conversations last: shuffled in among the rest
    random.Random(f"bpe-{world.seed}").shuffle(tasks)
    prompts = "".join(render_conversation(as_conversation(task.prompt)) + "\n" for task in tasks)
    return train_text[:n_chars] + prompts[: n_chars // 5]


@torch.no_grad()
def fact_recall(model, tokenizer, probes):
    """Fraction of (sentence start, word) probes whose greedy continuation starts with the word."""
    prompts = [tokenizer.encode(start) for start, _ in probes]
    tokens, _ = generate(model, prompts, 8, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, temperature=0.0)
    special = (tokenizer.eos_id, tokenizer.pad_id)
    texts = [tokenizer.decode([t for t in row if t not in special]) for row in tokens.tolist()]
    return sum(text.strip().startswith(word) for text, (_, word) in zip(texts, probes)) / len(probes)


def make_tokenizer(cfg, resumed, train_text, world, master):
    """The stage's tokenizer: its own on --resume, GPT-2's, a given tokenizer.json, or a BPE trained here."""
    if resumed:
        return load_tokenizer(cfg.out_dir)
    if cfg.tokenizer == "gpt2":
        return Tokenizer.gpt2()
    if cfg.tokenizer:
        try:
            return Tokenizer.load(cfg.tokenizer)
        except ValueError as e:
            raise UserError(f"--tokenizer: {e}") from None
    t0 = time.time()
    tokenizer_text = bpe_text(train_text, cfg.tokenizer_chars, world)
    tokenizer = Tokenizer.train(tokenizer_text, cfg.vocab_size)
    if master:
        print(f"tokenizer: {tokenizer.vocab_size} tokens trained on {len(tokenizer_text):,} characters in "
              f"{time.time() - t0:.1f}s")
    return tokenizer


def main(cfg):
    # Data parallel: the model wrapped (DDP). Its forward is the whole computation the loss needs, so DDP's
    # hooks see every parameter and average the gradients during backward, overlapped with it.
    rank, world_size, device, resume = start_stage(cfg)
    master = rank == 0

    # ---- data and tokenizer ----
    world = None
    if cfg.data:
        text = load_text(cfg.data)
        cut = int(len(text) * 0.95)
        train_text, val_text = text[:cut], text[cut:]
    else:
        world = World(cfg.world_seed)
        train_text, val_text = world.corpus(), world.corpus_val()
    tokenizer = make_tokenizer(cfg, resume is not None, train_text, world, master)
    train_tokens = torch.tensor(tokenizer.encode(train_text), dtype=torch.long)
    val_tokens = torch.tensor(tokenizer.encode(val_text), dtype=torch.long)
    if len(train_tokens) <= cfg.block_size + 1 or len(val_tokens) <= cfg.block_size + 1:
        raise UserError(f"{cfg.data or 'corpus'}: too little text for --block_size={cfg.block_size} "
                        f"({len(train_tokens)} train / {len(val_tokens)} validation tokens)")
    if master:
        print(f"data: {len(train_tokens):,} train tokens, {len(val_tokens):,} validation tokens")

    # ---- model and optimizer ----
    model_config = GPTConfig(block_size=cfg.block_size, vocab_size=tokenizer.vocab_size, n_layer=cfg.n_layer,
                             n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, flash=cfg.flash)
    model = GPT(model_config).to(device)
    optimizer = make_adamw(model, cfg.lr, cfg.weight_decay)
    data_rng = torch.Generator().manual_seed(cfg.seed)     # same on every rank: see get_batch
    step, best_val = 0, math.inf
    if resume:
        load_resumed(model, resume["model"], os.path.join(cfg.out_dir, "last.pt"))
        optimizer.load_state_dict(resume["optimizer"])
        data_rng.set_state(resume["data_rng"])
        set_rng_state(resume["rng"])
        step, best_val = resume["step"], resume["best_val"]
        if master:
            print(f"resumed from {cfg.out_dir}/last.pt at step {step}")
    dtype = resolve_dtype(cfg.dtype, device)
    if master:
        print(f"model: {model.num_params() / 1e6:.2f}M parameters; dtype {dtype}")
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if world_size > 1:
        model = DDP(model)

    @torch.no_grad()
    def validation_loss():
        model.eval()
        g = torch.Generator().manual_seed(0)   # the same validation batches every time
        losses = []
        for _ in range(cfg.eval_batches):
            x, y = get_batch(val_tokens, cfg.block_size, cfg.batch_size * world_size, rank, world_size, g)
            with autocast(device, dtype):
                logits = raw_model(x.to(device))
            losses.append(torch.nn.functional.cross_entropy(logits.float().flatten(0, 1),
                                                            y.to(device).flatten()).item())
        model.train()
        return all_reduce_mean(sum(losses) / len(losses))

    def save_last():
        save_checkpoint(os.path.join(cfg.out_dir, "last.pt"), {
            "model": model_state(raw_model), "optimizer": optimizer.state_dict(), "step": step,
            "best_val": best_val, "data_rng": data_rng.get_state(), "rng": rng_state(),
            "config": config_dict(cfg)})

    log, progress, guard = open_stage(cfg, master, cfg.max_steps, step, resume is not None)
    if master:
        tokenizer.save(os.path.join(cfg.out_dir, "tokenizer.json"))
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * world_size
    start_time = time.time()

    # ---- the training loop ----
    model.train()
    try:
        while step < cfg.max_steps:
            # ======== read this first: the pretraining step: next-token loss, then one update ========
            lr = cosine_lr(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
            set_lr(optimizer, lr)
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                x, y = get_batch(train_tokens, cfg.block_size, cfg.batch_size * world_size, rank, world_size,
                                 data_rng)
                # DDP: synchronise gradients only on the last micro-step
                sync = world_size == 1 or micro == cfg.grad_accum - 1
                with (nullcontext() if sync else model.no_sync()), autocast(device, dtype):
                    logits = model(x.to(device))
                    # next-token cross-entropy: L = -(1/N) Σ_t log p(x_{t+1} | x_≤t), in fp32
                    # (logits.float(): bf16 keeps 3 significant digits, too few for a log-softmax over
                    # 2,048 tokens)
                    loss = sft_loss(logits.float(), y.to(device),
                                    torch.ones_like(y, device=device)) / cfg.grad_accum
                loss.backward()
                loss_sum += loss.item()
            # clip, skip the step if the loss or a gradient is not finite, step, zero the gradients
            step_optimizers(torch.tensor(loss_sum), [raw_model], [optimizer], cfg.grad_clip, guard)
            step += 1
            # ======== end of read this first ========

            if step % cfg.log_interval == 0 or step == cfg.max_steps:
                train_loss = all_reduce_mean(loss_sum)
                progress.line(step, tokens_per_step, loss=train_loss, lr=lr)
                log.log(step=step, train_loss=train_loss, lr=lr)
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                val = validation_loss()
                log.log(step=step, val_loss=val, elapsed_s=time.time() - start_time)
                if master:
                    print(f"step {step}: validation loss {val:.4f}")
                    if val < best_val:
                        best_val = val
                        save_model(cfg.out_dir, raw_model, tokenizer, "lm", cfg, step)
                    save_last()
    except KeyboardInterrupt:
        exit_interrupted(save_last, master, cfg.out_dir, f"step {step}")

    if master:
        rows = read_metrics(os.path.join(cfg.out_dir, "metrics.jsonl"))
        plot_metrics(os.path.join(cfg.out_dir, "loss.png"), rows, "step",
                     {"pretraining loss": ["train_loss", "val_loss"]}, title="pretraining")
        summary = {"best_val_loss": best_val, "steps": step, "seconds": time.time() - start_time,
                   "params": raw_model.num_params(), "train_tokens": len(train_tokens),
                   "skipped_steps": guard.skipped, "dtype": dtype}
        # the world's facts are learnt late: the lexicon by step ~1,000, sums by ~2,000
        if world is not None:
            best_model = load_model(cfg.out_dir)[0].to(device)
            with autocast(device, dtype):
                summary["fact_recall"] = {family: fact_recall(best_model, tokenizer, probes)
                                          for family, probes in World.fact_probes().items()}
            print("facts recalled: " + ", ".join(f"{family} {share:.0%}"
                                                 for family, share in summary["fact_recall"].items()))
        write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
        print(f"done: best validation loss {best_val:.4f}; weights in {cfg.out_dir}/model.pt")
    cleanup_distributed()


if __name__ == "__main__":
    run(main, Config)

"""Stage 2: supervised fine-tuning (监督学习). Show the pretrained model demonstrations (an instruction
and a good answer), rendered through the one prompt template, and train it to produce the answer:
the same next-token loss as pretraining, counted only on the response and its end-of-text.

    python train_sft.py                                  # the world's demonstrations, ~3 minutes on 2 cores
    python train_sft.py --data=demos.json                # your own file (seed JSON list, Alpaca, JSONL)
    python train_sft.py --init=gpt2/ --tokenizer=gpt2    # start from a Hugging Face GPT-2 folder
    torchrun --standalone --nproc_per_node=2 train_sft.py
    python train_sft.py --init=out/sft --preferred=out/labels --out_dir=out/preferred_ft --lr=1e-4 --epochs=2

The last is Preferred-FT, the DPO paper's fair baseline: SFT continued on the top-ranked response of each
ranking, the same rankings the reward model and DPO learn from. What DPO and PPO gain beyond it is what the
rejected responses taught: the value of comparing, not just of seeing more good answers.

Each step also adds the next-token loss on a few windows of pretraining text (--ptx_coef, like PPO-ptx
later): InstructGPT's SFT did not use it, but a model this small otherwise forgets what pretraining taught.

On the built-in world every evaluation also samples answers to held-out instructions and asks the gold
judge (world.gold_score) how good they are. InstructGPT saw the validation loss bottom out after about one
epoch while human preference kept rising; summary.json reports where each peaked here.
"""

import dataclasses
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from minigpt.checkpoint import (config_dict, load_resumed, model_state, rng_state, save_checkpoint,
                                save_model, set_rng_state, write_json)
from minigpt.cli import UserError, check, run
from minigpt.data import encode_conversation, lm_windows, load_text, sft_batch
from minigpt.demonstrators import ERROR_RATE
from minigpt.sft_data import file_demonstrations, preferred_demonstrations, world_demonstrations
from minigpt.losses import sft_loss
from minigpt.respond import respond
from minigpt.starting_point import load_init, rebuild
from minigpt.training import (all_reduce_mean, all_reduce_sum, autocast, check_dtype, cleanup_distributed,
                              cosine_lr, exit_interrupted, make_adamw, open_stage, plot_metrics, read_metrics,
                              resolve_dtype, set_lr, start_stage, step_optimizers)
from minigpt.world import World


# The pretraining windows mixed into step s are drawn with seed cfg.seed + PTX_SEED_STRIDE * (s + 1): a
# function of the step alone (a resumed run draws the same ones), with a stride above any seed in use, so no
# two (seed, step) pairs draw the same windows.
PTX_SEED_STRIDE = 1_000_003

@dataclass
class Config:
    out_dir: str = field(default="out/sft", metadata={"help": "stage folder to write"})
    init: str = field(default="out/pretrain", metadata={
        "help": "stage folder to start from, or a Hugging Face GPT-2 folder (config.json + "
                "model.safetensors)"})
    tokenizer: str = field(default="", metadata={
        "help": "empty = the init folder's tokenizer.json; gpt2 = GPT-2's (needed with a Hugging Face "
                "--init)"})
    data: str = field(default="", metadata={
        "help": "demonstrations file (JSON list, Alpaca, JSONL); empty = the world's simulated "
                "demonstrators"})
    preferred: str = field(default="", metadata={
        "help": "Preferred-FT: a label.py folder (or comparisons file) whose top-ranked responses are the "
                "demonstrations"})
    world_seed: int = field(default=0, metadata={"help": "seed of the built-in instruction world"})
    error_rate: float = field(default=ERROR_RATE, metadata={
        "help": "how often the simulated demonstrators make a mistake (minigpt/demonstrators.py: their "
                "habits; 0 = clean demonstrations)"})
    max_chars: int = field(default=2000, metadata={
        "help": "drop demonstrations longer than this (instruction + output)"})
    seed: int = field(default=1337, metadata={"help": "seed for demonstrations, data order and dropout"})
    dropout: float = field(default=0.0, metadata={
        "help": "dropout while fine-tuning (InstructGPT: 0.2 over 16 epochs; here val loss still falls at "
                "the end, so none); saved config has none"})
    # optimisation
    batch_size: int = field(default=16, metadata={"help": "demonstrations per step per process"})
    epochs: float = field(default=4, metadata={"help": "passes over the demonstrations (sets max_steps)"})
    max_steps: int = field(default=0, metadata={
        "help": "optimizer steps; 0 = epochs * examples / global batch"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate"})
    warmup_steps: int = field(default=20, metadata={"help": "linear warm-up steps"})
    min_lr_ratio: float = field(default=0.1, metadata={
        "help": "cosine decays to this fraction of lr (InstructGPT: 10%)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm (0 = off)"})
    ptx_coef: float = field(default=1.0, metadata={
        "help": "weight of the pretraining LM loss added to each step, so SFT keeps the facts pretraining "
                "taught (0 = off)"})
    ptx_data: str = field(default="", metadata={
        "help": "pretraining text for --ptx_coef (.txt file or folder); empty = the world's corpus, or no "
                "mix with --data"})
    ptx_batch_size: int = field(default=8, metadata={"help": "pretraining windows per step"})
    # evaluation
    eval_interval: int = field(default=100, metadata={"help": "steps between evaluations + checkpoints"})
    eval_prompts: int = field(default=64, metadata={
        "help": "held-out instructions answered and gold-scored per evaluation (world only; 0 = off)"})
    eval_greedy: bool = field(default=True, metadata={
        "help": "also gold-score greedy answers, beside temperature 1"})
    max_new_tokens: int = field(default=32, metadata={"help": "longest sampled answer at evaluation"})
    select: str = field(default="val_loss", metadata={
        "help": "model.pt keeps the best val_loss or the best gold (InstructGPT selected by reward-model "
                "score)"})
    log_interval: int = field(default=10, metadata={"help": "steps between progress lines"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    dtype: str = field(default="auto", metadata={
        "help": "auto (bf16 autocast where this device's bf16 matmul is clearly faster), float32 or "
                "bfloat16"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    resume: bool = field(default=False, metadata={"help": "continue from out_dir/last.pt"})
    force: bool = field(default=False, metadata={"help": "overwrite a run already in out_dir"})

    def validate(self):
        check_dtype(self.dtype)
        for key in ("batch_size", "eval_interval", "log_interval", "max_new_tokens", "max_chars",
                    "ptx_batch_size"):
            check(getattr(self, key) > 0, f"--{key} must be > 0, got {getattr(self, key)}")
        check(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        check(self.epochs > 0 or self.max_steps > 0, "--epochs or --max_steps must be > 0")
        check(all(x >= 0 for x in (self.max_steps, self.eval_prompts, self.warmup_steps, self.grad_clip)),
              "--max_steps, --eval_prompts, --warmup_steps and --grad_clip must be >= 0")
        check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        check(0 <= self.error_rate <= 1, f"--error_rate must be in [0, 1], got {self.error_rate}")
        check(self.ptx_coef >= 0, f"--ptx_coef must be >= 0, got {self.ptx_coef}")
        check(self.tokenizer in ("", "gpt2"), f"--tokenizer must be empty or gpt2, got {self.tokenizer!r}")
        check(self.select in ("val_loss", "gold"), f"--select must be val_loss or gold, got {self.select!r}")
        check(not (self.data and self.preferred),
              "--data and --preferred are two sources of demonstrations: pick one")


# ---- demonstrations ---------------------------------------------------------------------------------

def encode_examples(tokenizer, conversations, block_size):
    """[conversation] -> [(ids, loss_mask)] through the chat template, the loss on every assistant turn and
    its end-of-text (one turn: prompt + response + eos, the loss on the last two), cut to block_size.
    Examples with no answer token left in block_size are dropped."""
    encoded = [encode_conversation(tokenizer, c) for c in conversations]
    return [(ids[:block_size], mask[:block_size]) for ids, mask in encoded if sum(mask[:block_size]) > 0]


def demonstrations(cfg, tokenizer, block_size, master):
    """-> (train, val) demonstrations encoded with their loss masks, from --data, --preferred or the world's
    demonstrators; the world (None with --data) and its held-out tasks for the gold judge; the share of train
    demonstrations with a mistake (None unless the world's demonstrators wrote them)."""
    rng = random.Random(cfg.seed)
    world, eval_tasks, mistakes = None, [], None
    if cfg.data:
        train_demos, val_demos = file_demonstrations(cfg.data, cfg.max_chars, rng)
    elif cfg.preferred:
        train_demos, val_demos = preferred_demonstrations(cfg.preferred, cfg.max_chars)
        world = World(cfg.world_seed)                   # for the gold-scored evaluations and the corpus mix
        eval_tasks = world.split("sft_val")[: cfg.eval_prompts]
    else:
        world = World(cfg.world_seed)
        train_demos, mistakes = world_demonstrations(world, "sft_train", rng, cfg.error_rate)
        val_demos, _ = world_demonstrations(world, "sft_val", rng, cfg.error_rate)
        eval_tasks = world.split("sft_val")[: cfg.eval_prompts]
    train = encode_examples(tokenizer, train_demos, block_size)
    val = encode_examples(tokenizer, val_demos, block_size)
    if not train or not val:
        raise UserError(f"no demonstration fits in the model's block_size ({block_size} tokens)")
    mistake_rate = mistakes / len(train_demos) if mistakes is not None else None
    if master:
        dropped = len(train_demos) + len(val_demos) - len(train) - len(val)
        print(f"data: {len(train)} train / {len(val)} validation demonstrations"
              + (f", {mistake_rate:.0%} of train demonstrations contain a mistake" if mistakes is not None
                 else "")
              + (f" (the top-ranked response of each ranking in {cfg.preferred})" if cfg.preferred else "")
              + (f"; {dropped} dropped (no room for the response in {block_size} tokens)" if dropped else ""))
    return train, val, world, eval_tasks, mistake_rate


def pretraining_tokens(cfg, tokenizer, world, block_size, master):
    """The pretraining mix's token stream: --ptx_data, else the world's corpus; None when the mix is off.

    In a model this small, SFT alone overwrites what pretraining taught (the pretraining loss climbs from ~1
    to ~8 nats) and the reward model, initialised from SFT, inherits the loss. So each step minimises
        L = L_SFT + γ · L_LM(pretraining text),   γ = --ptx_coef"""
    ptx_text = None
    if cfg.ptx_coef > 0:
        ptx_text = load_text(cfg.ptx_data) if cfg.ptx_data else world.corpus() if world else None
    ptx_tokens = None
    if ptx_text:
        ptx_tokens = torch.tensor(tokenizer.encode(ptx_text), dtype=torch.long)
        check(len(ptx_tokens) > block_size + 1,
              f"{cfg.ptx_data or 'corpus'}: too little text for one {block_size}-token window")
    if master:
        mix = f"{cfg.ptx_coef} x LM loss on {len(ptx_tokens):,} tokens" if ptx_tokens is not None else "off"
        print(f"pretraining mix: {mix}")
    return ptx_tokens


def next_batch(order, n, global_batch, generator):
    """Indices of the next global batch from an endless stream of shuffled epochs.

    order = {"perm": permutation of range(n), "pos": how much of it is used}; a fresh permutation is drawn
    from `generator` whenever one runs out. Every rank draws the same global batch (same generator state),
    then takes its own slice, so N processes see what one process with N times the batch would."""
    idx = []
    while len(idx) < global_batch:
        if order["pos"] == n:
            order["perm"], order["pos"] = torch.randperm(n, generator=generator).tolist(), 0
        take = min(global_batch - len(idx), n - order["pos"])
        idx += order["perm"][order["pos"]: order["pos"] + take]
        order["pos"] += take
    return idx


# ---- evaluation ----------------------------------------------------------------------------------------

@torch.no_grad()
def validation_loss(model, examples, pad_id, batch_size, device, dtype):
    """Mean cross-entropy per response token over all validation examples (each rank scores its share)."""
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        x, y, mask = sft_batch(examples[i: i + batch_size], pad_id)
        with autocast(device, dtype):
            logits = model(x.to(device))
        n = int(mask.sum())
        total += sft_loss(logits.float(), y.to(device), mask.to(device)).item() * n
        count += n
    return all_reduce_sum(total) / max(all_reduce_sum(count), 1)


def mean_gold(model, tokenizer, world, tasks, temperature, max_new_tokens, seed):
    """Mean gold score of answers to `tasks`, sampled with a fixed seed (temperature 0 = greedy)."""
    if not tasks:
        return float("nan"), []
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    out = respond(model, tokenizer, [t.prompt for t in tasks], max_new_tokens, temperature, generator=g)
    scores = [world.gold_score(t, text) for t, text in zip(tasks, out.texts)]
    return sum(scores) / len(scores), out.texts


def evaluate(model, val, tokenizer, world, tasks, cfg, device, rank, world_size):
    """Validation loss, and the gold judge's mean score of sampled (and greedy) answers to the held-out tasks
    -> (row, the sampled answers); each rank evaluates its share."""
    model.eval()
    row = {"val_loss": validation_loss(model, val[rank::world_size], tokenizer.pad_id, cfg.batch_size, device,
                                       cfg.dtype)}
    texts = []
    if world and tasks:
        mine = tasks[rank::world_size] or tasks
        g, texts = mean_gold(model, tokenizer, world, mine, 1.0, cfg.max_new_tokens, cfg.seed + rank)
        row["gold"] = all_reduce_mean(g)
        if cfg.eval_greedy:
            greedy, _ = mean_gold(model, tokenizer, world, mine, 0.0, cfg.max_new_tokens, 0)
            row["gold_greedy"] = all_reduce_mean(greedy)
    model.train()
    return row, texts


def update_best(best, row, step, select):
    """Track the best validation loss and the best gold score, and where they were -> does model.pt take this
    step's weights (--select: the best val_loss, or the best gold)?"""
    gold = row.get("gold")
    if gold is not None and gold > best["gold"]:
        best["gold"], best["gold_step"] = gold, step
    improved = row["val_loss"] < best["val_loss"]
    if improved:
        best["val_loss"], best["val_step"], best["gold_at_best_val"] = row["val_loss"], step, gold
    return best["gold_step"] == step if select == "gold" and gold is not None else improved


def write_summary(cfg, best, rows, gold_scored, run):
    """summary.json: the best validation loss and gold and where they were, the pretrained model's and the
    last evaluation's, then the run's own numbers (`run`); and the closing line."""
    final = next((r for r in reversed(rows) if "val_loss" in r), {})
    summary = {
        "best_val_loss": best["val_loss"], "best_val_step": best["val_step"],
        "best_gold": best["gold"] if gold_scored else None,
        "best_gold_step": best["gold_step"] if gold_scored else None,
        "gold_at_best_val": best["gold_at_best_val"], "final_gold": final.get("gold"),
        "final_gold_greedy": final.get("gold_greedy"), "init_gold": best["gold_init"],
        "init_gold_greedy": best["gold_greedy_init"], "init_val_loss": best["val_loss_init"],
        "selected_by": cfg.select, **run}
    write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
    print(f"done: best validation loss {best['val_loss']:.4f} at step {best['val_step']}"
          + (f"; best gold {best['gold']:.3f} at step {best['gold_step']} (pretrained: "
             f"{best['gold_init']:.3f})" if gold_scored and best["gold_init"] is not None else "")
          + f"; weights in {cfg.out_dir}/model.pt")


def main(cfg):
    # Data parallel: the model wrapped (DDP), as in pretraining: the SFT and the pretraining-mix losses both
    # go through its forward (no_sync on the first backward, so both gradients are averaged once, together).
    rank, world_size, device, resume = start_stage(cfg)
    master = rank == 0

    # ---- model, tokenizer, demonstrations, the pretraining mix ----
    model, tokenizer = load_init(cfg.init, cfg.tokenizer)
    model = rebuild(model, dropout=cfg.dropout, vocab_size=max(model.config.vocab_size, tokenizer.vocab_size))
    block_size = model.config.block_size
    check(cfg.max_new_tokens < block_size, f"--max_new_tokens ({cfg.max_new_tokens}) must be < the model's "
                                           f"block_size ({block_size})")
    train, val, world, eval_tasks, mistake_rate = demonstrations(cfg, tokenizer, block_size, master)
    ptx_tokens = pretraining_tokens(cfg, tokenizer, world, block_size, master)
    global_batch = cfg.batch_size * world_size
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(train) / global_batch))
    model = model.to(device)
    optimizer = make_adamw(model, cfg.lr, cfg.weight_decay)
    data_rng = torch.Generator().manual_seed(cfg.seed)   # same on every rank: see next_batch
    order = {"perm": [], "pos": len(train)}             # empty: the first batch draws a permutation
    step = 0
    best = {"val_loss": math.inf, "val_step": 0, "gold": -math.inf, "gold_step": 0, "gold_at_best_val": None,
            "gold_init": None, "gold_greedy_init": None, "val_loss_init": None}
    if resume:
        load_resumed(model, resume["model"], os.path.join(cfg.out_dir, "last.pt"))
        optimizer.load_state_dict(resume["optimizer"])
        data_rng.set_state(resume["data_rng"])
        set_rng_state(resume["rng"])
        step, order, best = resume["step"], resume["order"], resume["best"]
        if master:
            print(f"resumed from {cfg.out_dir}/last.pt at step {step}")
    if master:
        print(f"model: {model.num_params() / 1e6:.2f}M parameters, dropout {cfg.dropout}, dtype "
              f"{resolve_dtype(cfg.dtype, device)}; {max_steps} steps = "
              f"{max_steps * global_batch / len(train):.1f} epochs of {len(train)} demonstrations")
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if world_size > 1:
        model = DDP(model)

    def save_last(at_step, data_state):
        save_checkpoint(os.path.join(cfg.out_dir, "last.pt"), {
            "model": model_state(raw_model), "optimizer": optimizer.state_dict(), "step": at_step,
            "order": data_state[0], "data_rng": data_state[1], "best": best, "rng": rng_state(),
            "config": config_dict(cfg)})

    def snapshot():
        """The data position at a step boundary (a copy: `order` changes in place)."""
        return dict(order, perm=list(order["perm"])), data_rng.get_state()

    def evaluate_and_keep():
        """Evaluate, log, keep the best weights, print one answer -> the row."""
        row, texts = evaluate(raw_model, val, tokenizer, world, eval_tasks, cfg, device, rank, world_size)
        log.log(step=step, **row, elapsed_s=time.time() - start_time)
        keep = update_best(best, row, step, cfg.select)
        if master:
            print(f"step {step}: " + " | ".join(f"{k} {v:.4f}" for k, v in row.items()))
            if texts:
                print(f"  {eval_tasks[0].instruction!r} -> {texts[0]!r}")
            # Dropout is a training-time choice: the saved config has none; later stages never sample with it.
            if keep:
                save_model(cfg.out_dir, raw_model, tokenizer, "lm", cfg, step, extra={
                    "model_config": dataclasses.asdict(dataclasses.replace(raw_model.config, dropout=0.0))})
        return row

    log, progress, guard = open_stage(cfg, master, max_steps, step, resume is not None)
    if master:
        tokenizer.save(os.path.join(cfg.out_dir, "tokenizer.json"))
    start_time = time.time()
    if not resume:   # step 0: the pretrained model, prompted with the same template
        row = evaluate_and_keep()
        best["val_loss_init"], best["gold_init"], best["gold_greedy_init"] = \
            row["val_loss"], row.get("gold"), row.get("gold_greedy")

    # ---- the training loop ----
    model.train()
    tokens = 0
    data_state = snapshot()
    try:
        while step < max_steps:
            # ======== read this first: the SFT step: loss on the response, + γ · pretraining loss ========
            lr = cosine_lr(step, max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
            set_lr(optimizer, lr)
            idx = next_batch(order, len(train), global_batch, data_rng)[rank::world_size]
            x, y, mask = sft_batch([train[i] for i in idx], tokenizer.pad_id)   # (B, T) each
            # N processes: DDP averages their N gradients, so each divides its summed loss by (response tokens
            # over ALL processes) / N; the average is then the gradient of one process's global-batch mean.
            n_tokens = all_reduce_sum(float(mask.sum())) / world_size
            # With a pretraining mix, the two losses go backward in turn (DDP syncs on the second).
            with model.no_sync() if world_size > 1 and ptx_tokens is not None else nullcontext():
                with autocast(device, cfg.dtype):
                    logits = model(x.to(device))
                    # L_SFT = -(1/|response|) Σ_{t in response + eos} log p(y_t | x_≤t); prompt not scored
                    loss = sft_loss(logits.float(), y.to(device), mask.to(device), n_tokens)
                loss.backward()
            total = loss.detach()
            if ptx_tokens is not None:
                # + γ · L_LM on pretraining windows: per step one global batch (step-seeded), sliced by rank
                g = torch.Generator().manual_seed(cfg.seed + PTX_SEED_STRIDE * (step + 1))
                px, py = lm_windows(ptx_tokens, block_size, cfg.ptx_batch_size * world_size, g)
                px, py = px[rank::world_size].to(device), py[rank::world_size].to(device)   # (b, T) each
                with autocast(device, cfg.dtype):
                    ptx_loss = sft_loss(model(px).float(), py, torch.ones_like(py))     # every token scored
                (cfg.ptx_coef * ptx_loss).backward()
                total = total + cfg.ptx_coef * ptx_loss.detach()
            # clip, skip the step if the loss or a gradient is not finite, step, zero the gradients
            step_optimizers(total, [raw_model], [optimizer], cfg.grad_clip, guard)
            step += 1
            # ======== end of read this first ========
            data_state = snapshot()   # what Ctrl-C saves: the data position after the last finished step
            tokens += x.numel()

            if step % cfg.log_interval == 0 or step == max_steps:
                train_loss = all_reduce_mean(loss.item())
                ptx = {"ptx_loss": all_reduce_mean(ptx_loss.item())} if ptx_tokens is not None else {}
                progress.line(step, tokens * world_size / cfg.log_interval, loss=train_loss, lr=lr, **ptx)
                log.log(step=step, train_loss=train_loss, lr=lr, **ptx)
                tokens = 0
            if step % cfg.eval_interval == 0 or step == max_steps:
                evaluate_and_keep()
                if master:
                    save_last(step, data_state)
    except KeyboardInterrupt:
        exit_interrupted(lambda: save_last(step, data_state), master, cfg.out_dir, f"step {step}")

    if master:
        rows = read_metrics(os.path.join(cfg.out_dir, "metrics.jsonl"))
        plot_metrics(os.path.join(cfg.out_dir, "loss.png"), rows, "step", {"SFT loss (response tokens)":
                     ["train_loss", "val_loss"]}, title="supervised fine-tuning", logy=True)
        if world:
            plot_metrics(os.path.join(cfg.out_dir, "gold.png"), rows, "step",
                         {"gold score on sft_val": ["gold", "gold_greedy"]}, title="supervised fine-tuning")
        write_summary(cfg, best, rows, bool(eval_tasks), dict(
            steps=step, epochs=step * global_batch / len(train), n_train=len(train), n_val=len(val),
            train_mistake_rate=mistake_rate, seconds=time.time() - start_time, params=raw_model.num_params(),
            skipped_steps=guard.skipped, dtype=resolve_dtype(cfg.dtype, device)))
    cleanup_distributed()


if __name__ == "__main__":
    run(main, Config)

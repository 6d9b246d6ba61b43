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
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from minigpt.checkpoint import (check_out_dir, config_dict, load_checkpoint, load_model, load_resumed,
                                model_state, rng_state, save_checkpoint, save_model, set_rng_state,
                                write_json)
from minigpt.cli import UserError, check, run
from minigpt.data import (clean_demonstrations, encode_prompt_response, lm_windows, load_demonstrations, load_rankings,
                          load_text, render_prompt, sft_batch)
from minigpt.demonstrators import ERROR_RATE
from minigpt.losses import sft_loss
from minigpt.model import GPT
from minigpt.respond import respond
from minigpt.tokenizer import Tokenizer
from minigpt.training import (MetricsLog, NonFiniteGuard, Progress, all_reduce_mean, all_reduce_sum, autocast,
                              check_dtype, cleanup_distributed, cosine_lr, make_adamw, pick_device, plot_metrics,
                              read_metrics, resolve_dtype, setup_distributed)
from minigpt.world import World


# The pretraining windows mixed into step s are drawn with seed cfg.seed + PTX_SEED_STRIDE * (s + 1): a function of
# the step alone (a resumed run draws the same ones), with a stride above any seed in use, so no two (seed, step)
# pairs draw the same windows.
PTX_SEED_STRIDE = 1_000_003

@dataclass
class Config:
    out_dir: str = field(default="out/sft", metadata={"help": "stage folder to write"})
    init: str = field(default="out/pretrain", metadata={"help": "stage folder to start from, or a Hugging Face GPT-2 "
                                                                "folder (config.json + model.safetensors)"})
    tokenizer: str = field(default="", metadata={"help": "empty = the init folder's tokenizer.json; gpt2 = GPT-2's "
                                                         "(needed with a Hugging Face --init)"})
    data: str = field(default="", metadata={"help": "demonstrations file (JSON list, Alpaca, JSONL); empty = the "
                                                    "world's simulated demonstrators"})
    preferred: str = field(default="", metadata={"help": "Preferred-FT: a label.py folder (or comparisons file) whose "
                                                         "top-ranked responses are the demonstrations"})
    world_seed: int = field(default=0, metadata={"help": "seed of the built-in instruction world"})
    error_rate: float = field(default=ERROR_RATE, metadata={"help": "how often the simulated demonstrators make a "
                              "mistake (minigpt/world.py: their habits; 0 = clean demonstrations)"})
    max_chars: int = field(default=2000, metadata={"help": "drop demonstrations longer than this (instruction + output)"})
    seed: int = field(default=1337, metadata={"help": "seed for demonstrations, data order and dropout"})
    dropout: float = field(default=0.0, metadata={"help": "dropout while fine-tuning (InstructGPT: 0.2 over 16 epochs; "
                                                          "here val loss still falls at the end, so none); saved "
                                                          "config has none"})
    # optimisation
    batch_size: int = field(default=16, metadata={"help": "demonstrations per step per process"})
    epochs: float = field(default=4, metadata={"help": "passes over the demonstrations (sets max_steps)"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps; 0 = epochs * examples / global batch"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate"})
    warmup_steps: int = field(default=20, metadata={"help": "linear warm-up steps"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decays to this fraction of lr "
                                                               "(InstructGPT: 10%)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm (0 = off)"})
    ptx_coef: float = field(default=1.0, metadata={"help": "weight of the pretraining LM loss added to each step, "
                                                           "so SFT keeps the facts pretraining taught (0 = off)"})
    ptx_data: str = field(default="", metadata={"help": "pretraining text for --ptx_coef (.txt file or folder); "
                                                        "empty = the world's corpus, or no mix with --data"})
    ptx_batch_size: int = field(default=8, metadata={"help": "pretraining windows per step"})
    # evaluation
    eval_interval: int = field(default=100, metadata={"help": "steps between evaluations + checkpoints"})
    eval_prompts: int = field(default=64, metadata={"help": "held-out instructions answered and gold-scored per "
                                                            "evaluation (world only; 0 = off)"})
    eval_greedy: bool = field(default=True, metadata={"help": "also gold-score greedy answers, beside temperature 1"})
    max_new_tokens: int = field(default=32, metadata={"help": "longest sampled answer at evaluation"})
    select: str = field(default="val_loss", metadata={"help": "model.pt keeps the best val_loss or the best gold "
                                                              "(InstructGPT selected by reward-model score)"})
    log_interval: int = field(default=10, metadata={"help": "steps between progress lines"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 autocast where this device's bf16 matmul is "
                                                         "clearly faster), float32 or bfloat16"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    resume: bool = field(default=False, metadata={"help": "continue from out_dir/last.pt"})
    force: bool = field(default=False, metadata={"help": "overwrite a run already in out_dir"})

    def validate(self):
        check_dtype(self.dtype)
        for key in ("batch_size", "eval_interval", "log_interval", "max_new_tokens", "max_chars", "ptx_batch_size"):
            check(getattr(self, key) > 0, f"--{key} must be > 0, got {getattr(self, key)}")
        check(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        check(self.epochs > 0 or self.max_steps > 0, "--epochs or --max_steps must be > 0")
        check(self.max_steps >= 0 and self.eval_prompts >= 0 and self.warmup_steps >= 0 and self.grad_clip >= 0,
              "--max_steps, --eval_prompts, --warmup_steps and --grad_clip must be >= 0")
        check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        check(0 <= self.error_rate <= 1, f"--error_rate must be in [0, 1], got {self.error_rate}")
        check(self.ptx_coef >= 0, f"--ptx_coef must be >= 0, got {self.ptx_coef}")
        check(self.tokenizer in ("", "gpt2"), f"--tokenizer must be empty or gpt2, got {self.tokenizer!r}")
        check(self.select in ("val_loss", "gold"), f"--select must be val_loss or gold, got {self.select!r}")
        check(not (self.data and self.preferred), "--data and --preferred are two sources of demonstrations: pick one")


# ---- starting point -------------------------------------------------------------------------------

def load_init(cfg):
    """The model to fine-tune and its tokenizer: a stage folder, or a Hugging Face GPT-2 folder."""
    if os.path.isfile(os.path.join(cfg.init, "model.pt")):
        if cfg.tokenizer:
            raise UserError(f"--tokenizer={cfg.tokenizer}: {cfg.init} is a stage folder and brings its own tokenizer")
        if not os.path.isfile(os.path.join(cfg.init, "summary.json")):
            print(f"warning: {cfg.init} has no summary.json: its stage did not finish", file=sys.stderr)
        model, tokenizer, _ = load_model(cfg.init, kind="lm")
        return model, tokenizer
    if os.path.isfile(os.path.join(cfg.init, "config.json")):
        if cfg.tokenizer != "gpt2":
            raise UserError(f"{cfg.init} is a Hugging Face folder: pass --tokenizer=gpt2")
        try:
            model = GPT.from_pretrained(cfg.init)
        except ValueError as e:
            raise UserError(str(e).splitlines()[0]) from None
        return model, Tokenizer.gpt2()
    if not os.path.isdir(cfg.init):
        raise UserError(f"--init={cfg.init}: no such folder (run train_pretrain.py first)")
    raise UserError(f"--init={cfg.init}: neither a stage folder (model.pt) nor a Hugging Face folder (config.json)")


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


# ---- demonstrations ---------------------------------------------------------------------------------

def world_demonstrations(world, split, rng, error_rate):
    """One demonstration per task of the split: (prompt text, response text), and how many contain a mistake."""
    pairs, mistakes = [], 0
    for task in world.split(split):
        response, mistake = world.demonstration(task, rng, error_rate=error_rate)
        pairs.append((render_prompt(task.instruction), response))
        mistakes += mistake is not None
    return pairs, mistakes


def file_demonstrations(cfg, rng):
    """(train pairs, validation pairs) from a file: shuffled, 10% (at least 1) held out."""
    examples, _ = clean_demonstrations(load_demonstrations(cfg.data), cfg.max_chars, source=cfg.data)
    if not examples:
        raise UserError(f"{cfg.data}: no usable demonstrations left after cleaning")
    if len(examples) < 20:
        print(f"warning: only {len(examples)} demonstrations: expect memorisation, not learning", file=sys.stderr)
    pairs = [(render_prompt(e["instruction"], e.get("input", "")), e["output"]) for e in examples]
    rng.shuffle(pairs)
    if len(pairs) == 1:
        print("warning: a single demonstration: validation loss is measured on it too", file=sys.stderr)
        return pairs, pairs
    n_val = max(1, round(0.1 * len(pairs)))
    return pairs[n_val:], pairs[:n_val]


def preferred_demonstrations(source, max_chars=2000):
    """(train pairs, validation pairs) for Preferred-FT: the best response of each ranking (label.py's folder, its
    train.jsonl and val.jsonl; or a comparisons file, every n-th ranking held out as in train_rm.py)."""
    if os.path.isdir(source):
        train_recs, val_recs = load_rankings(source)
    else:
        train_recs, val_recs = load_rankings("", data=source, max_chars=max_chars)
    train, val = ([(render_prompt(r["prompt"]), r["responses"][0]) for r in recs] for recs in (train_recs, val_recs))
    if not train or not val:
        raise UserError(f"{source}: Preferred-FT needs rankings to train on and held-out ones to validate on; got "
                        f"{len(train)} and {len(val)}")
    return train, val


def encode_examples(tokenizer, pairs, block_size):
    """[(prompt, response)] -> [(ids, loss_mask)]: prompt + response + end-of-text, loss on the last two.
    Examples whose response does not fit in block_size at all are dropped."""
    encoded = [encode_prompt_response(tokenizer, p, r, block_size) for p, r in pairs]
    return [(ids, mask) for ids, mask in encoded if sum(mask) > 0]


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
    out = respond(model, tokenizer, [t.instruction for t in tasks], max_new_tokens, temperature, generator=g)
    scores = [world.gold_score(t, text) for t, text in zip(tasks, out.texts)]
    return sum(scores) / len(scores), out.texts


def main(cfg):
    # Data parallel: the model wrapped (DDP), as in pretraining: the SFT and the pretraining-mix losses both go
    # through its forward (no_sync on the first backward, so the two gradients are averaged once, together).
    check_out_dir(cfg.out_dir, cfg.resume, cfg.force)
    rank, world_size, device = setup_distributed(pick_device(cfg.device))
    master = rank == 0
    torch.manual_seed(cfg.seed)
    resume = load_checkpoint(os.path.join(cfg.out_dir, "last.pt")) if cfg.resume else None

    # ---- model, tokenizer, demonstrations ----
    model, tokenizer = load_init(cfg)
    model = rebuild(model, dropout=cfg.dropout, vocab_size=max(model.config.vocab_size, tokenizer.vocab_size))
    block_size = model.config.block_size
    check(cfg.max_new_tokens < block_size, f"--max_new_tokens ({cfg.max_new_tokens}) must be < the model's "
                                           f"block_size ({block_size})")
    rng = random.Random(cfg.seed)
    world, eval_tasks, mistakes = None, [], None
    if cfg.data:
        train_pairs, val_pairs = file_demonstrations(cfg, rng)
    elif cfg.preferred:
        train_pairs, val_pairs = preferred_demonstrations(cfg.preferred, cfg.max_chars)
        world = World(cfg.world_seed)                        # for the gold-scored evaluations and the corpus mix
        eval_tasks = world.split("sft_val")[: cfg.eval_prompts]
    else:
        world = World(cfg.world_seed)
        train_pairs, mistakes = world_demonstrations(world, "sft_train", rng, cfg.error_rate)
        val_pairs, _ = world_demonstrations(world, "sft_val", rng, cfg.error_rate)
        eval_tasks = world.split("sft_val")[: cfg.eval_prompts]
    train = encode_examples(tokenizer, train_pairs, block_size)
    val = encode_examples(tokenizer, val_pairs, block_size)
    if not train or not val:
        raise UserError(f"no demonstration fits in the model's block_size ({block_size} tokens)")
    if master:
        dropped = len(train_pairs) + len(val_pairs) - len(train) - len(val)
        print(f"data: {len(train)} train / {len(val)} validation demonstrations"
              + (f", {mistakes / len(train_pairs):.0%} of train demonstrations contain a mistake" if mistakes is not None else "")
            + (f" (the top-ranked response of each ranking in {cfg.preferred})" if cfg.preferred else "")
              + (f"; {dropped} dropped (no room for the response in {block_size} tokens)" if dropped else ""))

    # The pretraining mix: in a model this small, SFT alone overwrites what pretraining taught (the pretraining
    # loss climbs from ~1 to ~8 nats) and the reward model, initialised from SFT, inherits the loss.
    # L = L_SFT + γ · L_LM(pretraining text), γ = --ptx_coef
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

    def evaluate():
        """Validation loss, and the gold judge's mean score of sampled (and greedy) answers."""
        raw_model.eval()
        row = {"val_loss": validation_loss(raw_model, val[rank::world_size], tokenizer.pad_id, cfg.batch_size,
                                           device, cfg.dtype)}
        texts = []
        if world and eval_tasks:
            mine = eval_tasks[rank::world_size] or eval_tasks
            g, texts = mean_gold(raw_model, tokenizer, world, mine, 1.0, cfg.max_new_tokens, cfg.seed + rank)
            row["gold"] = all_reduce_mean(g)
            if cfg.eval_greedy:
                row["gold_greedy"] = all_reduce_mean(mean_gold(raw_model, tokenizer, world, mine, 0.0,
                                                                cfg.max_new_tokens, 0)[0])
        raw_model.train()
        return row, texts

    def save_weights():
        # Dropout is a training-time choice: the saved config has none, so later stages never sample with it.
        save_model(cfg.out_dir, raw_model, tokenizer, "lm", cfg, step,
                   extra={"model_config": dataclasses.asdict(dataclasses.replace(raw_model.config, dropout=0.0))})

    def save_last(at_step, data_state):
        save_checkpoint(os.path.join(cfg.out_dir, "last.pt"), {
            "model": model_state(raw_model), "optimizer": optimizer.state_dict(), "step": at_step,
            "order": data_state[0], "data_rng": data_state[1], "best": best, "rng": rng_state(),
            "config": config_dict(cfg)})

    def snapshot():
        """The data position at a step boundary (a copy: `order` changes in place)."""
        return dict(order, perm=list(order["perm"])), data_rng.get_state()

    def after_eval(row, texts):
        """Log, keep the best weights, print one answer."""
        log.log(step=step, **row, elapsed_s=time.time() - start_time)
        gold = row.get("gold")
        if gold is not None and gold > best["gold"]:
            best["gold"], best["gold_step"] = gold, step
        improved = row["val_loss"] < best["val_loss"]
        if improved:
            best["val_loss"], best["val_step"], best["gold_at_best_val"] = row["val_loss"], step, gold
        if master:
            print(f"step {step}: " + " | ".join(f"{k} {v:.4f}" for k, v in row.items()))
            if texts:
                print(f"  {eval_tasks[0].instruction!r} -> {texts[0]!r}")
            keep = best["gold_step"] == step if cfg.select == "gold" and gold is not None else improved
            if keep:
                save_weights()

    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        write_json(os.path.join(cfg.out_dir, "config.json"), config_dict(cfg))
        tokenizer.save(os.path.join(cfg.out_dir, "tokenizer.json"))
    log = MetricsLog(os.path.join(cfg.out_dir, "metrics.jsonl"), enabled=master, resume_step=step if resume else None)
    progress = Progress(max_steps, enabled=master, start_step=step)
    guard = NonFiniteGuard()
    start_time = time.time()

    # ---- step 0: the pretrained model, prompted with the same template ----
    if not resume:
        row, texts = evaluate()
        best["val_loss_init"], best["gold_init"], best["gold_greedy_init"] = \
            row["val_loss"], row.get("gold"), row.get("gold_greedy")
        after_eval(row, texts)

    # ---- the training loop ----
    model.train()
    tokens = 0
    data_state = snapshot()
    try:
        while step < max_steps:
            lr = cosine_lr(step, max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = next_batch(order, len(train), global_batch, data_rng)[rank::world_size]
            x, y, mask = sft_batch([train[i] for i in idx], tokenizer.pad_id)   # (B, T) each
            # N processes: DDP averages their N gradients, so each divides its summed loss by (response tokens
            # over ALL processes) / N; the average is then the gradient of one process's global-batch mean.
            n_tokens = all_reduce_sum(float(mask.sum())) / world_size
            # With a pretraining mix, the two losses go backward one after the other (DDP syncs on the second).
            with model.no_sync() if world_size > 1 and ptx_tokens is not None else nullcontext():
                with autocast(device, cfg.dtype):
                    logits = model(x.to(device))
                    # L_SFT = -(1/|response|) Σ_{t in response + eos} log p(y_t | x_≤t); the prompt is not scored
                    loss = sft_loss(logits.float(), y.to(device), mask.to(device), n_tokens)
                loss.backward()
            total = loss.detach()
            if ptx_tokens is not None:
                # + γ · L_LM on pretraining windows: one global batch per step (seeded by the step), sliced by rank
                g = torch.Generator().manual_seed(cfg.seed + PTX_SEED_STRIDE * (step + 1))
                px, py = lm_windows(ptx_tokens, block_size, cfg.ptx_batch_size * world_size, g)
                px, py = px[rank::world_size].to(device), py[rank::world_size].to(device)   # (b, T) each
                with autocast(device, cfg.dtype):
                    ptx_loss = sft_loss(model(px).float(), py, torch.ones_like(py))         # every token scored
                (cfg.ptx_coef * ptx_loss).backward()
                total = total + cfg.ptx_coef * ptx_loss.detach()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if guard.ok(total, raw_model):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            data_state = snapshot()   # what Ctrl-C saves: the data position after the last finished step
            tokens += x.numel()

            if step % cfg.log_interval == 0 or step == max_steps:
                train_loss = all_reduce_mean(loss.item())
                ptx = {"ptx_loss": all_reduce_mean(ptx_loss.item())} if ptx_tokens is not None else {}
                progress.line(step, tokens * world_size / cfg.log_interval, loss=train_loss, lr=lr, **ptx)
                log.log(step=step, train_loss=train_loss, lr=lr, **ptx)
                tokens = 0
            if step % cfg.eval_interval == 0 or step == max_steps:
                after_eval(*evaluate())
                if master:
                    save_last(step, data_state)
    except KeyboardInterrupt:
        if master:
            save_last(step, data_state)
            print(f"\ninterrupted: saved {cfg.out_dir}/last.pt at step {step}; rerun with --resume to continue")
        cleanup_distributed()
        sys.exit(130)

    if master:
        rows = read_metrics(os.path.join(cfg.out_dir, "metrics.jsonl"))
        plot_metrics(os.path.join(cfg.out_dir, "loss.png"), rows, "step", {"SFT loss (response tokens)":
                     ["train_loss", "val_loss"]}, title="supervised fine-tuning", logy=True)
        if world:
            plot_metrics(os.path.join(cfg.out_dir, "gold.png"), rows, "step",
                         {"gold score on sft_val": ["gold", "gold_greedy"]}, title="supervised fine-tuning")
        final = next((r for r in reversed(rows) if "val_loss" in r), {})
        summary = {
            "best_val_loss": best["val_loss"], "best_val_step": best["val_step"],
            "best_gold": best["gold"] if eval_tasks else None, "best_gold_step": best["gold_step"] if eval_tasks else None,
            "gold_at_best_val": best["gold_at_best_val"], "final_gold": final.get("gold"),
            "final_gold_greedy": final.get("gold_greedy"), "init_gold": best["gold_init"],
            "init_gold_greedy": best["gold_greedy_init"], "init_val_loss": best["val_loss_init"],
            "selected_by": cfg.select, "steps": step, "epochs": step * global_batch / len(train),
            "n_train": len(train), "n_val": len(val),
            "train_mistake_rate": mistakes / len(train_pairs) if mistakes is not None else None,
            "seconds": time.time() - start_time, "params": raw_model.num_params(), "skipped_steps": guard.skipped,
            "dtype": resolve_dtype(cfg.dtype, device)}
        write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
        print(f"done: best validation loss {best['val_loss']:.4f} at step {best['val_step']}"
              + (f"; best gold {best['gold']:.3f} at step {best['gold_step']} (pretrained: {best['gold_init']:.3f})"
                 if eval_tasks and best["gold_init"] is not None else "")
              + f"; weights in {cfg.out_dir}/model.pt")
    cleanup_distributed()


if __name__ == "__main__":
    run(main, Config)

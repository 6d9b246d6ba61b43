"""Stage 4: the reward model (奖励模型). Start from the SFT model, replace the unembedding by a scalar
head, and train it so that r(x, y_w) > r(x, y_l) whenever labellers ranked y_w above y_l for prompt x.

InstructGPT's loss: each prompt's K ranked responses give C(K,2) pairs, and all of them form ONE batch
element (K forward passes instead of C(K,2); shuffled pairs over-fit in a single epoch):

    loss(θ) = −1/C(K,2) · Σ_{y_w above y_l} log σ(r_θ(x, y_w) − r_θ(x, y_l))

The reward is read at the last real token (the end-of-text) of prompt ⊕ response ⊕ eos, rendered with the
same template as SFT. After training, the head is rescaled so the demonstrations' rewards have mean 0 and
standard deviation 1.

    python train_rm.py                         # out/labels (label.py) -> out/rm, about 2 minutes on 2 cores
    python train_rm.py --data=pairs.jsonl      # your comparisons: ranked lists or chosen/rejected pairs
    python train_rm.py --data=out/labels/train.jsonl,out/human_labels.jsonl --val_data=out/labels/val.jsonl
                                               # simulated labels mixed with serve.py's ranking tab's
    torchrun --standalone --nproc_per_node=2 train_rm.py
"""

import dataclasses
import functools
import json
import math
import os
import random
import time
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from minigpt.checkpoint import (config_dict, load_model, load_resumed, model_state, rng_state,
                                save_checkpoint, save_model, set_rng_state, write_json)
from minigpt.cli import UserError, check, run
from minigpt.data import encode_rankings, epoch_batches
from minigpt.rankings import load_rankings
from minigpt.evaluation import ranking_report
from minigpt.losses import rm_batch_loss
from minigpt.model import RewardModel
from minigpt.sampling import right_pad
from minigpt.scoring import sequence_logprobs
from minigpt.starting_point import rebuild
from minigpt.training import (all_reduce_mean, autocast, check_dtype, cleanup_distributed, cosine_lr,
                              exit_interrupted, make_adamw, open_stage, plot_metrics, read_metrics,
                              resolve_dtype, set_lr, start_stage, step_optimizers)
from minigpt.world import SimulatedLabeler, World, labeler_agreement


@dataclass
class Config:
    out_dir: str = field(default="out/rm", metadata={"help": "stage folder to write"})
    sft: str = field(default="out/sft", metadata={"help": "stage folder the reward model starts from"})
    labels: str = field(default="out/labels", metadata={
        "help": "label.py's folder: train.jsonl and val.jsonl"})
    data: str = field(default="", metadata={
        "help": "a comparisons file instead of --labels (ranked lists or chosen/rejected pairs, JSONL); "
                "several comma-separated are read as one, e.g. out/labels/train.jsonl,human.jsonl"})
    val_data: str = field(default="", metadata={
        "help": "held-out comparisons for --data (empty = hold out --val_fraction of --data)"})
    val_fraction: float = field(default=0.15, metadata={
        "help": "share of --data held out when no --val_data"})
    max_chars: int = field(default=2000, metadata={
        "help": "drop --data rankings whose prompt and longest response exceed this many characters"})
    world_seed: int = field(default=0, metadata={"help": "seed of the built-in instruction world"})
    seed: int = field(default=1337, metadata={"help": "seed for data order and dropout"})
    n_prompts: int = field(default=0, metadata={"help": "train on the first N ranked prompts (0 = all)"})
    # optimisation
    epochs: int = field(default=6, metadata={
        "help": "passes over the comparisons (InstructGPT: 1; here the small reward model still under-fits "
                "at 3)"})
    batch_size: int = field(default=16, metadata={
        "help": "prompts per step per process (each with its K responses)"})
    # A gentle learning rate keeps what the SFT model knows: at 1e-3 (2 epochs) the RM ordered 0.644 of
    # held-out pairs of SFT samples like gold (Spearman 0.30) and PPO on it gained +0.11; at 1e-4 (3 epochs)
    # 0.685 (0.39) and +0.16 (seed 1337, same labels, before the judge's near-miss rule; README "How the
    # defaults came to be").
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate of the trunk (the SFT weights)"})
    # The head starts at 0 and must learn from scratch: at the trunk's 1e-4 it had barely moved after 3 epochs
    # (train loss 0.665, chance 0.693); at 1e-2 for 6 epochs held-out accuracy 0.581 -> 0.637, Spearman
    # 0.25 -> 0.32.
    head_lr: float = field(default=1e-2, metadata={
        "help": "peak learning rate of the scalar head, which starts at 0"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decays to this fraction of lr"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm (0 = off)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout while training (saved weights use none)"})
    bias_prompts: int = field(default=500, metadata={"help": "demonstrations whose mean reward is set to 0"})
    # bookkeeping
    eval_interval: int = field(default=25, metadata={"help": "steps between validation + checkpoint"})
    eval_prompts: int = field(default=60, metadata={
        "help": "held-out rankings scored at each evaluation while training (the final report uses all)"})
    log_interval: int = field(default=5, metadata={"help": "steps between progress lines"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    dtype: str = field(default="auto", metadata={
        "help": "auto (bf16 autocast where this device's bf16 matmul is clearly faster), float32 or "
                "bfloat16"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    resume: bool = field(default=False, metadata={"help": "continue from out_dir/last.pt"})
    force: bool = field(default=False, metadata={"help": "overwrite a run already in out_dir"})

    def validate(self):
        check_dtype(self.dtype)
        for key in ("epochs", "batch_size", "eval_interval", "eval_prompts", "log_interval", "bias_prompts",
                    "max_chars"):
            check(getattr(self, key) > 0, f"--{key} must be > 0, got {getattr(self, key)}")
        check(self.lr > 0 and self.head_lr > 0,
              f"--lr and --head_lr must be > 0, got {self.lr}, {self.head_lr}")
        check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        check(0 < self.val_fraction < 1, f"--val_fraction must be in (0, 1), got {self.val_fraction}")
        check(self.n_prompts >= 0 and self.warmup_steps >= 0 and self.grad_clip >= 0,
              "--n_prompts, --warmup_steps and --grad_clip must be >= 0")


# ---- data -----------------------------------------------------------------------------------------------

def world_of(cfg, records):
    """The built-in world, if every prompt is one of its instructions (label.py's output given as --data too);
    None for other data: then the bias uses the chosen responses, and no labeller agreement is computed."""
    world = World(cfg.world_seed)
    try:
        for r in records:
            world.task(r["prompt"])
    except KeyError:
        return None
    return world


def ranked_ids(tokenizer, records, block_size):
    """Each ranking -> list of token-id lists, best..worst (the response's text encoded afresh, as PPO
    does)."""
    return [[ids for ids, _ in ranking] for ranking in encode_rankings(tokenizer, records, block_size)]


class Scorer(torch.nn.Module):
    """RewardModel.score as the forward pass, so DistributedDataParallel can wrap it (DDP only synchronises
    gradients of computations that went through its forward)."""

    def __init__(self, reward_model):
        super().__init__()
        self.reward_model = reward_model

    def forward(self, idx, attention_mask):
        return self.reward_model.score(idx, attention_mask)   # (B,) at each row's last real token


# ======== read this first: the reward model's loss, each ranking's C(K,2) pairs as one element ========
def rewards_of(scorer, rankings, pad_id, device):
    """All K responses of each ranking in ONE forward pass -> list of (K_b,) reward tensors, best..worst."""
    flat = [seq for ranking in rankings for seq in ranking]
    idx, mask = right_pad(flat, pad_id)                              # (sum K_b, T)
    r = scorer(idx.to(device), mask.to(device)).float()             # (sum K_b,)
    return list(torch.split(r, [len(ranking) for ranking in rankings]))


def ranking_loss(scorer, rankings, pad_id, device):
    """The InstructGPT loss of a batch of rankings -> (loss, pair accuracy, rewards)."""
    rewards = rewards_of(scorer, rankings, pad_id, device)
    loss, accuracy = rm_batch_loss(rewards)   # mean over prompts of each prompt's mean over its C(K,2) pairs
    return loss, accuracy, rewards
# ======== end of read this first ========


@torch.no_grad()
def all_rewards(scorer, rankings, pad_id, device, batch=64):
    return [r.cpu() for i in range(0, len(rankings), batch)
            for r in rewards_of(scorer, rankings[i: i + batch], pad_id, device)]


# ---- the demonstrations' rewards: mean 0, standard deviation 1 -------------------------------------------

def normalise_on_demonstrations(reward_model, tokenizer, prompts, responses, device):
    """Rescale the head so the rewards of (prompt, demonstration) pairs have mean exactly 0 (InstructGPT's
    bias) and standard deviation 1 (OpenAI's lm-human-preferences' gain) -> (shift, gain). The order of any
    two responses is unchanged; PPO's kl_coef then means the same whatever scale the training happened to
    reach.

        r'(x, y) = (r(x, y) - mean) / std    i.e.  w' = w / std,  b' = (b - mean) / std
    """
    seqs = ranked_ids(tokenizer, [{"prompt": p, "responses": [y]} for p, y in zip(prompts, responses)],
                           reward_model.config.block_size)
    was_training = reward_model.training
    reward_model.eval()
    rewards = torch.cat(all_rewards(reward_model.score, seqs, tokenizer.pad_id, device)).double()
    mean, std = rewards.mean().item(), rewards.std(correction=0).item()
    # an untrained (zero) head scores everything alike: leave the scale be
    gain = 1.0 / std if std > 0 else 1.0
    with torch.no_grad():
        reward_model.head.weight *= gain
        reward_model.head.bias.sub_(mean).mul_(gain)
    reward_model.train(was_training)
    return -mean, gain


def demonstrations_for_bias(cfg, world, train):
    """InstructGPT: the labellers' demonstrations. The world's demonstrators on SFT prompts; without the
    world, the chosen (best) response of each training ranking."""
    if world is None:
        picked = train[: cfg.bias_prompts]
        return [r["prompt"] for r in picked], [r["responses"][0] for r in picked]
    rng = random.Random(f"bias-{cfg.seed}")
    tasks = world.split("sft_train")[: cfg.bias_prompts]
    return [t.prompt for t in tasks], [world.demonstration(t, rng)[0] for t in tasks]


@torch.no_grad()
def sft_loglikelihoods(sft, tokenizer, records, device):
    """log π_SFT(y | x) of each response (its end-of-text included), one (K_b,) tensor per ranking, like
    all_rewards: the SFT model's own opinion of each response, set beside the reward model's."""
    out = []
    for ranking in encode_rankings(tokenizer, records, sft.config.block_size):
        idx, _ = right_pad([ids for ids, _ in ranking], tokenizer.pad_id)            # (K, T)
        response, _ = right_pad([mask for _, mask in ranking], 0)                    # (K, T) 1 on y ⊕ eos
        out.append(sequence_logprobs(sft, idx.to(device), response.to(device)).cpu())
    return out


# ---- held-out report ------------------------------------------------------------------------------------

def report(records, rewards):
    """Held-out metrics (minigpt.evaluation.ranking_report) of rewards (list of (K_b,) tensors), plus the
    loss."""
    out = ranking_report(records, [r.tolist() for r in rewards])
    out["loss"] = rm_batch_loss(rewards)[0].item() if rewards else float("nan")
    return out


def label_summary(cfg):
    """label.py's summary.json for --labels (K, the labellers' agreement), or {} with --data."""
    path = os.path.join(cfg.labels, "summary.json")
    if cfg.data or not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def two_labeller_agreement(cfg, world, records):
    """How often two independent simulated labellers order a held-out pair the same way: label.py's number
    when it labelled these comparisons, else two fresh labellers on the held-out responses (world prompts)."""
    labelled = label_summary(cfg)
    if "labeler_agreement" in labelled:
        return labelled["labeler_agreement"]
    return labeler_agreement(world, [r["prompt"] for r in records], [r["responses"] for r in records],
                             SimulatedLabeler(cfg.seed + 1), SimulatedLabeler(cfg.seed + 2))


def plot_scatter(path, rep):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for kind in sorted(set(rep["mistakes"])):
        pts = [(g, x) for g, x, m in zip(rep["golds"], rep["rewards"], rep["mistakes"]) if m == kind]
        ax.scatter(*zip(*pts), s=8, alpha=0.5, label=kind)
    ax.set_xlabel("gold score")
    ax.set_ylabel("reward")
    ax.set_title(f"held-out responses: Spearman {rep['spearman']:.2f}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def held_out_summary(rep, agreement, lik):
    """summary.json's held-out part: the report of the (rescaled) rewards, the labellers' agreement beside it,
    and lik, the same report of the SFT model's log-likelihoods (None without gold scores)."""
    return {
        "accuracy": rep["accuracy"], "gold_accuracy": rep.get("gold_accuracy"),
        "labeler_agreement": agreement, "ceiling": rep.get("ceiling"),
        **{k: None if math.isnan(rep.get(k, math.nan)) else rep[k]       # NaN (no gold) is written as null
           for k in ("spearman", "spearman_within_prompt", "labels_spearman_within_prompt")},
        "per_mistake_accuracy": rep.get("per_mistake_accuracy"),
        "per_mistake_pairs": rep.get("per_mistake_pairs"),
        "on_policy_gold_accuracy": rep.get("on_policy_gold_accuracy"),
        "on_policy_pairs": rep.get("on_policy_pairs"),
        "sft_likelihood": None if lik is None else {
            k: lik[k] for k in ("gold_accuracy", "on_policy_gold_accuracy", "spearman",
                                "spearman_within_prompt")},
        # of the rescaled rewards: the ranking loss depends on their scale, accuracy not
        "val_loss": rep["loss"],
    }


def print_summary(summary, out_dir):
    """The held-out report in words: pair accuracy beside its ceilings, agreement with gold, per mistake."""
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    print(f"held-out pair accuracy {fmt(summary['accuracy'])} (two labellers agree "
          f"{fmt(summary['labeler_agreement'])}, labels vs gold {fmt(summary['ceiling'])}); vs gold order "
          f"{fmt(summary['gold_accuracy'])}; Spearman with gold {fmt(summary['spearman'])}, within a prompt "
          f"{fmt(summary['spearman_within_prompt'])} "
          f"(the labels' order {fmt(summary['labels_spearman_within_prompt'])})")
    per_mistake, pairs = summary["per_mistake_accuracy"], summary["per_mistake_pairs"]
    if per_mistake:
        print("accuracy by the loser's mistake: "
              + ", ".join(f"{k} {v:.2f} ({pairs[k]})" for k, v in per_mistake.items()))
    lik = summary["sft_likelihood"]
    if lik and summary["on_policy_pairs"]:
        print(f"on pairs of the policy's own samples the reward model orders "
              f"{fmt(summary['on_policy_gold_accuracy'])} like gold ({summary['on_policy_pairs']} pairs); "
              f"the SFT model's log-likelihood as the ranker: {fmt(lik['on_policy_gold_accuracy'])} "
              f"(all pairs: {fmt(lik['gold_accuracy'])})")
    print(f"bias shift {summary['bias']:+.4f}, gain {summary['gain']:.3f} (demonstrations now average 0, "
          f"standard deviation 1); done in {summary['seconds']:.0f}s; weights in {out_dir}/model.pt")


# ---- main -----------------------------------------------------------------------------------------------

def main(cfg):
    # Data parallel: the loss's model wrapped. DDP wraps Scorer, RewardModel.score as a forward, because the
    # reward is read at each row's last real token by score(), not by RewardModel.forward, and DDP only
    # averages the gradients of what went through the forward it wraps.
    t0 = time.time()
    rank, world_size, device, resume = start_stage(cfg)
    master = rank == 0

    # ---- data and model ----
    train_recs, val_recs = load_rankings(cfg.labels, cfg.data, cfg.val_data, cfg.val_fraction, cfg.max_chars)
    if cfg.n_prompts:
        train_recs = train_recs[: cfg.n_prompts]
    world = world_of(cfg, train_recs + val_recs)
    sft, tokenizer, _ = load_model(cfg.sft, "lm")
    # trunk = the SFT weights (with --dropout while training), head = 0: every reward starts at 0
    model = RewardModel.from_gpt(rebuild(sft, dropout=cfg.dropout)).to(device)
    block_size = model.config.block_size
    train, val = ranked_ids(tokenizer, train_recs, block_size), ranked_ids(tokenizer, val_recs, block_size)
    if not train or not val:
        raise UserError(f"need training and held-out comparisons, got {len(train)} and {len(val)}")
    K = max(len(r) for r in train)
    global_batch = cfg.batch_size * world_size
    steps_per_epoch = math.ceil(len(train) / global_batch)
    max_steps = cfg.epochs * steps_per_epoch
    optimizer = make_adamw(model.gpt, cfg.lr, cfg.weight_decay)
    optimizer.add_param_group({"params": list(model.head.parameters()), "weight_decay": 0.0,
                               "lr_scale": cfg.head_lr / cfg.lr})
    step = 0
    if resume:
        load_resumed(model, resume["model"], os.path.join(cfg.out_dir, "last.pt"))
        optimizer.load_state_dict(resume["optimizer"])
        set_rng_state(resume["rng"])
        step = resume["step"]
        if master:
            print(f"resumed from {cfg.out_dir}/last.pt at step {step}")
    if master:
        n_pairs = sum(len(r) * (len(r) - 1) // 2 for r in train)
        print(f"data: {len(train)} train rankings (K <= {K}, {n_pairs} pairs), {len(val)} held out; "
              f"model: {model.gpt.num_params() / 1e6:.2f}M parameters, dtype "
              f"{resolve_dtype(cfg.dtype, device)}; {max_steps} steps")
    raw_model = model
    scorer = Scorer(model)
    if cfg.compile:
        scorer = torch.compile(scorer)
    if world_size > 1:
        scorer = DDP(scorer)

    lengths = [max(len(seq) for seq in ranking) for ranking in train]

    @functools.lru_cache(maxsize=1)
    def batches_of(epoch):
        return epoch_batches(lengths, global_batch, cfg.seed + epoch)

    def batch_at(step):
        """The rankings this rank trains on at `step` (the same on every rank, and after a resume)."""
        epoch, pos = divmod(step, steps_per_epoch)
        ids = batches_of(epoch)[pos]
        return [train[i] for i in ids[rank::world_size]] or [train[ids[0]]]

    def evaluate(n=len(val)):
        raw_model.eval()
        rep = report(val_recs[:n], all_rewards(raw_model.score, val[:n], tokenizer.pad_id, device))
        raw_model.train()
        return rep

    def save_last():
        save_checkpoint(os.path.join(cfg.out_dir, "last.pt"), {
            "model": model_state(raw_model), "optimizer": optimizer.state_dict(), "step": step,
            "rng": rng_state(), "config": config_dict(cfg)})

    log, progress, guard = open_stage(cfg, master, max_steps, step, resume is not None)
    if master and not resume:
        rep = evaluate(cfg.eval_prompts)
        log.log(step=0, val_loss=rep["loss"], val_accuracy=rep["accuracy"],
                val_gold_accuracy=rep.get("gold_accuracy"))

    # ---- the training loop ----
    model.train()
    try:
        while step < max_steps:
            lr = cosine_lr(step, max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
            set_lr(optimizer, lr)                                  # the head's group: lr * head_lr / lr
            rankings = batch_at(step)
            with autocast(device, cfg.dtype):
                loss, accuracy, _ = ranking_loss(scorer, rankings, tokenizer.pad_id, device)
            loss.backward()
            # clip, skip the step if the loss or a gradient is not finite, step, zero the gradients
            step_optimizers(loss, [raw_model], [optimizer], cfg.grad_clip, guard)
            step += 1

            if step % cfg.log_interval == 0 or step == max_steps:
                train_loss, train_acc = all_reduce_mean(loss.item()), all_reduce_mean(accuracy)
                progress.line(step, sum(len(s) for r in rankings for s in r) * world_size,
                              loss=train_loss, acc=train_acc, lr=lr)
                log.log(step=step, train_loss=train_loss, train_accuracy=train_acc, lr=lr)
            if master and (step % cfg.eval_interval == 0 or step == max_steps):
                rep = evaluate(cfg.eval_prompts)
                log.log(step=step, val_loss=rep["loss"], val_accuracy=rep["accuracy"],
                        val_gold_accuracy=rep.get("gold_accuracy"), elapsed_s=time.time() - t0)
                print(f"step {step}: held-out loss {rep['loss']:.4f}, accuracy {rep['accuracy']:.3f}"
                      + (f", vs gold {rep['gold_accuracy']:.3f}" if "gold_accuracy" in rep else ""))
                save_last()
    except KeyboardInterrupt:
        exit_interrupted(save_last, master, cfg.out_dir, f"step {step}")

    if master:
        # ---- InstructGPT's bias (demonstrations' mean reward 0), OpenAI's gain (standard deviation 1) ----
        prompts, demos = demonstrations_for_bias(cfg, world, train_recs)
        shift, gain = normalise_on_demonstrations(raw_model, tokenizer, prompts, demos, device)
        save_model(cfg.out_dir, raw_model, tokenizer, "reward", cfg, step, extra={
            "model_config": dataclasses.asdict(dataclasses.replace(raw_model.config, dropout=0.0))})
        # after the rescaling: the same orderings, rewards in units of the demonstrations' spread
        rep = evaluate()
        rows = read_metrics(os.path.join(cfg.out_dir, "metrics.jsonl"))
        plot_metrics(os.path.join(cfg.out_dir, "loss.png"), rows, "step",
                     {"ranking loss": ["train_loss", "val_loss"],
                      "pair accuracy": ["train_accuracy", "val_accuracy", "val_gold_accuracy"]},
                     title="reward model")
        lik = None
        if "spearman" in rep:
            plot_scatter(os.path.join(cfg.out_dir, "reward_vs_gold.png"), rep)
            # a yardstick: the SFT model's own log-likelihood of each response, used as if it were the reward
            lik = report(val_recs, sft_loglikelihoods(sft.to(device).eval(), tokenizer, val_recs, device))
        agreement = two_labeller_agreement(cfg, world, val_recs) if world else None
        summary = {
            **held_out_summary(rep, agreement, lik),
            "bias": shift, "gain": gain, "bias_demonstrations": len(demos),
            "n_train_prompts": len(train), "n_val_prompts": len(val), "K": label_summary(cfg).get("K", K),
            "mean_ranked": sum(map(len, train)) / len(train),
            "n_train_pairs": sum(len(r) * (len(r) - 1) // 2 for r in train), "epochs": cfg.epochs,
            "steps": step, "seconds": time.time() - t0, "params": raw_model.gpt.num_params(),
            "skipped_steps": guard.skipped, "dtype": resolve_dtype(cfg.dtype, device),
        }
        write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
        print_summary(summary, cfg.out_dir)
    cleanup_distributed()


if __name__ == "__main__":
    run(main, Config)

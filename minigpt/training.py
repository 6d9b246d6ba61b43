"""Small helpers every training script uses: device, distributed setup, learning-rate schedule,
optimizer, logging, plots. Plain functions; the loops themselves live in the scripts."""

import contextlib
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist

from minigpt.checkpoint import check_out_dir, config_dict, load_checkpoint, write_json
from minigpt.cli import UserError


# --- device and precision ---------------------------------------------------------------------

def pick_device(name="auto"):
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device={name}: CUDA is not available on this machine")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device=mps: MPS is not available on this machine")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise UserError(f"--device={name}: expected auto, cpu, cuda, cuda:N or mps")
    return name


DTYPES = ("auto", "float32", "bfloat16")


def check_dtype(dtype):
    """For a Config's validate(): a bad --dtype is a one-line error before any model loads."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype={dtype}: expected auto, float32 or bfloat16")


_BF16_SPEEDUP = {}  # device type -> measured bf16/fp32 matmul speed ratio, once per process


def has_bf16_units(kind):
    """Does this device type compute bf16 in hardware? CPU: AMX or AVX512-BF16; CUDA: Ampere or later."""
    if kind == "cpu":
        return any(getattr(torch.cpu, f, lambda: False)() for f in ("_is_amx_tile_supported",
                                                                    "_is_avx512_bf16_supported"))
    return kind == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def bf16_speedup(device, n=512, reps=8):
    """How many times faster a bf16 matmul is than an fp32 one on `device` (a probe of ~20 ms, cached).

    0 where the device has no bf16 units (it would be emulated, slower than fp32; MPS is left at fp32 too).
    Else speed = 2n³ FLOPs / best time of `reps` matmuls, fp32 and bf16 taking turns, so that a busy moment
    of the machine slows both alike and the best of each is the unhurried one: the answer does not flip
    with load.
    """
    kind = device.split(":")[0]
    if kind not in _BF16_SPEEDUP:
        if not has_bf16_units(kind):
            _BF16_SPEEDUP[kind] = 0.0
        else:
            a = {dtype: torch.randn(n, n, device=device, dtype=dtype)
                 for dtype in (torch.float32, torch.bfloat16)}
            best = {dtype: math.inf for dtype in a}
            for rep in range(reps + 1):                                  # rep 0 warms both up
                for dtype, x in a.items():
                    if kind == "cuda":
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                    x @ x
                    if kind == "cuda":
                        torch.cuda.synchronize()
                    if rep > 0:
                        best[dtype] = min(best[dtype], time.perf_counter() - t)
            _BF16_SPEEDUP[kind] = best[torch.float32] / best[torch.bfloat16]
    return _BF16_SPEEDUP[kind]


def resolve_dtype(dtype, device):
    """auto -> bfloat16 where the probe finds bf16 matmul clearly (1.5x) faster than fp32, else float32."""
    check_dtype(dtype)
    if dtype != "auto":
        return dtype
    return "bfloat16" if bf16_speedup(device) >= 1.5 else "float32"


def autocast(device, dtype="float32"):
    """bf16 autocast where asked (or where auto resolves to it), else a no-op.

    Parameters stay fp32 under autocast (only the matmuls' inputs are cast), so gradients and the Adam states
    are fp32 as well: no loss scaling, no master weights.
    """
    if resolve_dtype(dtype, device) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


# --- distributed data parallel (torchrun) -----------------------------------------------------

def setup_distributed(device):
    """Under torchrun: init the process group -> (rank, world_size, device). Else (0, 1, device)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1 and not dist.is_available():
        return 0, 1, device
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, device
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return rank, world, device


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(x):
    """Sum a float (or tensor) over ranks, in float64; identity when not distributed."""
    if not is_distributed():
        return x
    t = torch.as_tensor(x, dtype=torch.float64).clone()
    dist.all_reduce(t)
    return t.item() if t.dim() == 0 else t


def all_reduce_mean(x):
    """Average a float (or tensor) over ranks; identity when not distributed."""
    return all_reduce_sum(x) / dist.get_world_size() if is_distributed() else x


def cleanup_distributed():
    """The end of a run: every rank waits for the others, then leaves the process group. (Without the barrier,
    a rank that tears its group down while rank 0 is still writing the summary can be aborted by gloo.)"""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


# --- optimisation -----------------------------------------------------------------------------

def cosine_lr(step, max_steps, lr, warmup_steps, min_lr_ratio=0.1):
    """Linear warm-up to lr, then cosine decay to min_lr_ratio * lr at max_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_adamw(model, lr, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8):
    """AdamW with weight decay on matrices only (not on biases, LayerNorms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def grads_are_finite(model):
    return all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


class NonFiniteGuard:
    """A non-finite loss or gradient never reaches the weights: the step is skipped and counted;
    `limit` skips in a row stop the run (the last good checkpoint stays on disk)."""

    def __init__(self, limit=5):
        self.limit, self.in_a_row, self.skipped = limit, 0, 0

    def ok(self, loss, model):
        finite = bool(torch.isfinite(loss).all()) and grads_are_finite(model)
        if finite:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        print(f"warning: non-finite loss or gradient, step skipped ({self.skipped} so far)", file=sys.stderr)
        if self.in_a_row >= self.limit:
            raise UserError(f"{self.limit} non-finite steps in a row: stopping; the last good checkpoint "
                            "is kept (try a lower --lr)")
        return False


def step_optimizers(loss, models, optimizers, grad_clip, guard=None):
    """The tail of every training step, after loss.backward(): clip each model's gradient norm to grad_clip
    (0 = off), step every optimizer unless the loss or a gradient is not finite (guard: the step is skipped
    and counted), then zero the gradients -> the first model's gradient norm before clipping (None if off)."""
    norms = [torch.nn.utils.clip_grad_norm_(m.parameters(), grad_clip) if grad_clip > 0 else None
             for m in models]
    if guard is None or all(guard.ok(loss.detach(), m) for m in models):
        for o in optimizers:
            o.step()
    for o in optimizers:
        o.zero_grad(set_to_none=True)
    return None if norms[0] is None else norms[0].item()


def set_lr(optimizer, lr):
    """The schedule's learning rate on every parameter group, scaled by the group's own lr_scale if it has one
    (train_rm.py's scalar head learns faster than its trunk)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def average_gradients(model):
    """Data parallel by hand (train_ppo.py, train_grpo.py): each rank rolled out its own prompts, and the loss
    reads the model through trunk() and lm_head, not forward(), which DDP would have to wrap; so after
    backward() each gradient is replaced by its mean over the ranks, as DDP would have done."""
    if is_distributed():
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def exit_interrupted(save_last, master, out_dir, position):
    """Ctrl-C: the master saves last.pt (save_last()), says how to resume, and the process exits with 130."""
    if master:
        save_last()
        print(f"\ninterrupted: saved {out_dir}/last.pt at {position}; rerun with --resume to continue")
    if is_distributed():
        dist.destroy_process_group()     # no barrier: a rank may have stopped mid-step
    sys.exit(130)


def start_stage(cfg):
    """The first lines of every training stage: refuse to train over a run in cfg.out_dir (unless --resume or
    --force), join torchrun's process group when launched by it, seed torch, and read out_dir/last.pt on
    --resume -> (rank, world_size, device, the resumed state or None)."""
    check_out_dir(cfg.out_dir, cfg.resume, cfg.force)
    rank, world_size, device = setup_distributed(pick_device(cfg.device))
    torch.manual_seed(cfg.seed)
    resume = load_checkpoint(os.path.join(cfg.out_dir, "last.pt")) if cfg.resume else None
    return rank, world_size, device, resume


def open_stage(cfg, master, total, start_step, resumed):
    """The stage folder cfg.out_dir opened for writing: config.json (master only), then the metrics log (cut
    back to the resumed step), the progress printer and the non-finite guard
    -> (MetricsLog, Progress, NonFiniteGuard)."""
    out_dir = cfg.out_dir
    if master:
        os.makedirs(out_dir, exist_ok=True)
        write_json(os.path.join(out_dir, "config.json"), config_dict(cfg))
    log = MetricsLog(os.path.join(out_dir, "metrics.jsonl"), enabled=master,
                     resume_step=start_step if resumed else None)
    return log, Progress(total, enabled=master, start_step=start_step), NonFiniteGuard()


# --- logging ----------------------------------------------------------------------------------

class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl (rank 0 only). On resume the lines after the
    resumed step are dropped, so the log reads as one uninterrupted run."""

    def __init__(self, path, enabled=True, resume_step=None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if resume_step is None:
            open(path, "w").close()
        elif os.path.exists(path):
            kept = [line for line in open(path)
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            with open(path, "w") as f:
                f.writelines(kept)

    def log(self, **row):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(path_png, rows, x, series, title="", logy=False):
    """One PNG with a panel per entry of `series`: {panel_title: [metric keys]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(series.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, keys) in zip(axes[0], panels):
        for key in keys:
            pts = [(r[x], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=key, marker="." if len(pts) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel(x)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path_png, dpi=90)
    plt.close(fig)


class Progress:
    """One line per log step: step, metrics, ms/step, tokens/s, ETA."""

    def __init__(self, total_steps, enabled=True, start_step=0):
        self.total, self.enabled = total_steps, enabled
        self.t0 = self.last = time.time()
        self.start = self.last_step = start_step

    def line(self, step, tokens_per_step, **metrics):
        now = time.time()
        steps = max(step - self.last_step, 1)
        ms = (now - self.last) * 1000 / steps
        self.last, self.last_step = now, step
        eta = (now - self.t0) / max(step - self.start, 1) * (self.total - step)
        parts = " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        if self.enabled:
            print(f"step {step:5d}/{self.total} | {parts} | {ms:6.0f} ms/step | "
                  f"{tokens_per_step / max(ms, 1e-9) * 1000:7.0f} tok/s | eta {eta:4.0f}s", flush=True)

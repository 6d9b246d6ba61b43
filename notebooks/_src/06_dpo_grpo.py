# %% [markdown]
# # 06 · After InstructGPT: DPO and GRPO (直接偏好优化与组相对策略优化)
#
# InstructGPT's RL step needs four networks (policy, reference, reward model, value model) and sampling inside
# the training loop. Two later methods each remove part of that machinery:
#
# * **DPO** (Rafailov et al. 2023) removes the reward model, the value model and the sampling: it trains the
#   policy directly on the comparisons, with a loss that has the reward model's form;
# * **GRPO** (Shao et al. 2024) keeps the reward model and the sampling but removes the value model: it
#   samples G answers per prompt and uses their mean score as the baseline.
#
# This notebook derives DPO's loss and checks each step on a toy, computes GRPO's group advantage next to
# PPO's whitening, runs `train_dpo.py` and `train_grpo.py` on tiny models, and ends with what goes wrong when
# any of these methods optimises a learned reward too hard (over-optimisation).

# %%
import sys, os
sys.path.insert(0, os.path.abspath(".."))  # the repository root, so `import minigpt` works from notebooks/

import json, math, shutil, subprocess, tempfile, time
import torch
import torch.nn.functional as F
import matplotlib.pyplot as plt
from IPython.display import Image, display

torch.set_num_threads(2)
torch.manual_seed(0)
%matplotlib inline

from minigpt.world import World
from minigpt.losses import dpo_loss
from minigpt.ppo import group_advantages, masked_whiten, masked_mean, policy_loss, k3_kl
from minigpt.evaluation import best_of_n_kl_bound, best_of_n_kl
from minigpt.training import read_metrics

REPO = os.path.abspath("..")
work = tempfile.mkdtemp(prefix="minigpt_nb06_")   # every output of this notebook goes here
world = World(seed=0)

# Models this small train faster on one CPU thread: two threads spend longer synchronising than computing.
ENV = dict(os.environ, OMP_NUM_THREADS="1")

def run(script, *flags):
    """Run one of the repository's scripts like a terminal would; print the command and its last lines."""
    cmd = [sys.executable, script, *flags]
    print("$", " ".join(cmd[1:]))
    t0 = time.time()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV)
    print("\n".join(result.stdout.strip().splitlines()[-3:]))
    assert result.returncode == 0, result.stderr[-2000:]
    print(f"({time.time() - t0:.0f} s)\n")

# %% [markdown]
# ## 1. From the KL-constrained objective to DPO
#
# PPO (notebook 05) maximises, for each prompt $x$, the reward minus a KL penalty to the reference (the SFT
# model):
#
# $$\max_\pi\ \mathbb{E}_{y \sim \pi(\cdot \mid x)}\big[r(x, y)\big] -
# \beta\, \mathrm{KL}\big(\pi(\cdot \mid x)\,\|\,\pi_{\text{ref}}(\cdot \mid x)\big)$$
#
# This objective has a closed-form maximiser. Writing it as
# $-\beta\,\mathrm{KL}(\pi \,\|\, \pi^*) + \beta \log Z(x)$ shows that it is largest, with value
# $\beta \log Z(x)$, at
#
# $$\pi^*(y \mid x) = \frac{1}{Z(x)}\, \pi_{\text{ref}}(y \mid x)\, \exp\big(r(x, y)/\beta\big),
# \qquad Z(x) = \sum_y \pi_{\text{ref}}(y \mid x)\, \exp\big(r(x, y)/\beta\big).$$
#
# $Z(x)$ sums over every possible response, so it cannot be computed for a language model. Solve for the
# reward:
#
# $$r(x, y) = \beta \log \frac{\pi^*(y \mid x)}{\pi_{\text{ref}}(y \mid x)} + \beta \log Z(x).$$
#
# The reward model was trained with the Bradley–Terry likelihood
# $P(y_w \succ y_l) = \sigma\big(r(x, y_w) - r(x, y_l)\big)$, which depends only on reward *differences*. Both
# responses of a pair share the prompt, so $\beta \log Z(x)$ cancels. Replace $\pi^*$ by the policy
# $\pi_\theta$ being trained, and the reward model's loss becomes a loss on the policy alone:
#
# $$\mathcal{L}_{\text{DPO}}(\theta) = -\log \sigma\Big(
# \beta \log \frac{\pi_\theta(y_w \mid x)}{\pi_{\text{ref}}(y_w \mid x)} -
# \beta \log \frac{\pi_\theta(y_l \mid x)}{\pi_{\text{ref}}(y_l \mid x)}\Big)$$
#
# $\hat r(x, y) = \beta \log \big(\pi_\theta(y \mid x) / \pi_{\text{ref}}(y \mid x)\big)$ is the **implicit
# reward**: the policy is its own reward model. $\log \pi(y \mid x)$ is the sum of the response's token
# log-probabilities (`minigpt.losses.sequence_logprob`). No sampling, no reward model, no value model: only
# the comparisons, the policy and the frozen reference.
#
# **A toy check.** One prompt, five possible responses, a reference distribution and a reward. Compute $\pi^*$
# by the formula:

# %%
responses = ["8", "The answer is 8.", "Sure! The answer is 8.", "9", "Sorry, I cannot help with that."]
pi_ref = torch.tensor([0.30, 0.25, 0.20, 0.15, 0.10], dtype=torch.float64)
r = torch.tensor([1.0, 0.8, 0.3, -0.5, -1.0], dtype=torch.float64)     # best -> worst
beta = 0.5

Z = (pi_ref * torch.exp(r / beta)).sum()
pi_star = pi_ref * torch.exp(r / beta) / Z
implied = beta * torch.log(pi_star / pi_ref)                            # β log(π*/π_ref)

print(f"{'response':<34}{'π_ref':>7}{'r':>7}{'π*':>8}{'β log(π*/π_ref)':>17}{'r − that':>10}")
for y, p, ry, ps, im in zip(responses, pi_ref, r, pi_star, implied):
    print(f"{y!r:<34}{p:>7.3f}{ry:>7.2f}{ps:>8.3f}{im:>17.4f}{ry - im:>10.4f}")
print(f"\nβ log Z = {beta * math.log(Z):.4f}: the same constant in every row")
assert torch.allclose(r - implied, beta * torch.log(Z).expand(5))

# π* is the best of all distributions: no random one scores higher on E[r] − β KL(π || π_ref)
objective = lambda p: (p * r).sum() - beta * (p * torch.log(p / pi_ref)).sum()
others = torch.distributions.Dirichlet(torch.ones(5, dtype=torch.float64)).sample((2000,))
print(f"objective at π*: {objective(pi_star):.4f} (= β log Z);  best of 2000 random π: "
      f"{max(objective(p) for p in others):.4f}")

# %% [markdown]
# Now `minigpt.losses.dpo_loss` on all $\binom{5}{2} = 10$ pairs (the better response first). At the start of
# training $\pi_\theta = \pi_{\text{ref}}$: every implicit reward is 0 and every pair costs $\log 2$, a coin
# flip. At $\pi_\theta = \pi^*$ the implicit rewards are $r - \beta \log Z$, and the loss of each pair is the
# reward model's loss with the true reward, $-\log \sigma(r_w - r_l)$: the constant has cancelled.

# %%
i, j = torch.triu_indices(5, 5, offset=1)                              # 10 pairs, i better than j
logp_ref = torch.log(pi_ref)

loss0, rw0, rl0 = dpo_loss(logp_ref[i], logp_ref[j], logp_ref[i], logp_ref[j], beta)      # π = π_ref
print("π = π_ref: losses", [round(x, 4) for x in loss0.tolist()], " log 2 =", round(math.log(2), 4))
print("           implicit rewards all 0:", bool((rw0 == 0).all() and (rl0 == 0).all()))
assert torch.allclose(loss0, torch.full_like(loss0, math.log(2)))

logp_star = torch.log(pi_star)
loss1, rw1, rl1 = dpo_loss(logp_star[i], logp_star[j], logp_ref[i], logp_ref[j], beta)    # π = π*
bradley_terry = -F.logsigmoid(r[i] - r[j])
print("π = π*:     losses", [round(x, 4) for x in loss1.tolist()])
print("  −log σ(r_w − r_l)", [round(x, 4) for x in bradley_terry.tolist()])
assert torch.allclose(loss1, bradley_terry)

# one pair by hand: y_w = "8" (index 0), y_l = "9" (index 3)
w, l = 0, 3
margin = beta * ((math.log(pi_star[w]) - math.log(pi_ref[w])) - (math.log(pi_star[l]) - math.log(pi_ref[l])))
by_hand = -math.log(1 / (1 + math.exp(-margin)))
k = [(a, b) for a, b in zip(i.tolist(), j.tolist())].index((w, l))
print(f"\npair {responses[w]!r} > {responses[l]!r}: by hand {by_hand:.6f}, dpo_loss {loss1[k].item():.6f}")
assert abs(by_hand - loss1[k].item()) < 1e-9

# %% [markdown]
# ## 2. GRPO: the group is the baseline
#
# GRPO samples $G$ responses to each prompt and scores them with the reward model. The advantage of response
# $i$ is its score relative to the other responses **to the same prompt**, and every token of the response
# gets it:
#
# $$A_i = \frac{r_i - \text{mean}(r_1, \dots, r_G)}{\text{std}(r_1, \dots, r_G)}$$
#
# PPO instead whitens advantages over the whole batch, all prompts together. Compare the two on a table of
# scores, 4 prompts × $G = 4$ samples. Prompt 0 is easy (every answer scores high), prompt 1 is hard (every
# answer scores low), prompt 3 got four answers of the same score:

# %%
scores = torch.tensor([[2.0, 1.5, 1.8, 2.2],        # easy prompt
                       [-1.0, -1.5, -0.6, -1.2],    # hard prompt
                       [0.5, -0.4, 1.0, 0.1],
                       [0.3, 0.3, 0.3, 0.3]])       # four equally good answers
P, G = scores.shape
grpo_adv = group_advantages(scores.view(-1), G).view(P, G)
batch_adv = masked_whiten(scores, torch.ones_like(scores))  # PPO-style: one mean and std for the batch

def show(name, t):
    print(name)
    for p, row in enumerate(t.tolist()):
        print(f"  prompt {p}: " + "  ".join(f"{x:+.2f}" for x in row))

show("scores", scores); show("GRPO group advantages", grpo_adv); show("whitened over the batch", batch_adv)
print(f"GRPO: largest |mean| of a group {grpo_adv.mean(1).abs().max():.0e}")
assert torch.allclose(grpo_adv.mean(1), torch.zeros(P), atol=1e-5) and (grpo_adv[3] == 0).all()

# %% [markdown]
# Whitened over the batch, every answer to the easy prompt gets a positive advantage and every answer to the
# hard one a negative advantage: the signal says which *prompt* was easy, not which answer was better. The
# group advantage compares answers to the same prompt only. A group of equal scores gives zeros: nothing to
# prefer, no gradient.
#
# **Why the group mean is a baseline.** The policy gradient is unchanged when any $b$ that does not depend on
# the sampled response is subtracted from the reward, because
# $\mathbb{E}_{y \sim \pi}[\nabla \log \pi(y)] = \sum_y \nabla \pi(y) = \nabla 1 = 0$. The best such $b$ is
# close to the expected score of the prompt, $V(x) = \mathbb{E}_{y \sim \pi}[r(x, y)]$, which is what PPO's
# value model learns to predict. GRPO estimates it instead with the mean of $G$ samples of the same prompt,
# so **no value model is needed**: one network fewer to store and train, at the cost of $G$ samples per
# prompt. (The group mean includes $r_i$ itself, but
# $r_i - \text{mean} = \frac{G-1}{G}\big(r_i - \text{mean of the others}\big)$, a scaled leave-one-out
# baseline. Dividing by the group's std does change the weighting: groups whose scores are nearly equal get
# their small differences magnified.)
#
# Check $\mathbb{E}[\nabla \log \pi \cdot (r - b)] = \nabla \mathbb{E}[r]$ exactly on the toy of section 1: a
# policy $\pi = \text{softmax}(\theta)$ over the five responses.

# %%
theta = torch.log(pi_ref).clone().requires_grad_(True)
true_grad, = torch.autograd.grad((torch.softmax(theta, 0) * r).sum(), theta)        # ∇ E_π[r]
for b in (0.0, (pi_ref * r).sum().item(), 5.0):
    logp = torch.log_softmax(theta, 0)
    # Σ_y π(y) log π(y) (r(y) − b)
    surrogate = (logp.exp().detach() * logp * (r - b)).sum()
    g, = torch.autograd.grad(surrogate, theta)
    print(f"b = {b:+.3f}: gradient {[round(x, 4) for x in g.tolist()]}   "
          f"equals ∇E[r]: {torch.allclose(g, true_grad)}")

# %% [markdown]
# **The seed article's policy gradient.**
# $\nabla J(\theta) = \mathbb{E}_{\pi_\theta}\big[\nabla_\theta \log \pi_\theta(a \mid s)\, R\big]$ pushes up
# each sampled token $a$ in its context $s$ by the return $R$. PPO and GRPO both optimise the clipped
# surrogate of notebook 05,
#
# $$L^{\text{clip}} = \mathbb{E}_t\Big[\min\big(\rho_t A_t,\ \text{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\,
# A_t\big)\Big], \qquad \rho_t = \frac{\pi_\theta(a_t \mid s_t)}{\pi_{\text{old}}(a_t \mid s_t)}.$$
#
# At $\rho_t = 1$ (the first step on a fresh batch) the clip is inactive and
# $\nabla \rho_t = \rho_t \nabla \log \pi_\theta = \nabla \log \pi_\theta$, so
# $\nabla L^{\text{clip}} = \mathbb{E}_t[\nabla \log \pi_\theta(a_t \mid s_t)\, A_t]$. The two methods differ
# only in $A_t$: PPO's GAE from a value model, GRPO's group advantage of the whole response. With $A_t = R$,
# the raw score of the response on each of its tokens, it is exactly the seed's formula. Check all three with
# autograd (`policy_loss` returns $-L^{\text{clip}}$):

# %%
torch.manual_seed(0)
R = scores.view(-1)                                         # (B,) one score per response, B = P·G = 16
old_logprobs = -torch.rand(P * G, 6) * 3                    # (B, N) log π_old of each response's tokens
mask = torch.ones(P * G, 6); mask[5, 3:] = 0; mask[9, 4:] = 0  # two shorter responses

def grad_of_clipped(advantages):                            # gradient of −L_clip w.r.t. log π, at ratio 1
    logp = old_logprobs.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, old_logprobs, advantages, mask, clip=0.2)
    return torch.autograd.grad(loss, logp)[0]

def grad_of_seed_formula(advantages):                       # gradient of −E_t[log π(a_t|s_t) · A_t]
    logp = old_logprobs.clone().requires_grad_(True)
    return torch.autograd.grad(-masked_mean(logp * advantages, mask), logp)[0]

for name, A in [("A = R (raw score)", R[:, None] * mask),
                ("A = GRPO group advantage", group_advantages(R, G)[:, None] * mask),
                ("A = whitened over the batch", masked_whiten(R[:, None] * mask, mask))]:
    same = torch.allclose(grad_of_clipped(A), grad_of_seed_formula(A))
    print(f"{name:<30} clipped surrogate at ratio 1 has the gradient E[∇log π · A]: {same}")
    assert same

# %% [markdown]
# Here, as in `train_ppo.py`, the mean runs over all response tokens of the minibatch; the GRPO paper first
# averages each response's tokens, then the responses, which weighs short responses' tokens more.
#
# **GRPO's KL term.** PPO subtracts $\beta\,(\log \pi - \log \pi_{\text{ref}})$ from the reward of each token.
# GRPO has no per-token reward to put it in, so it adds $\beta$ times a KL estimate to the loss. It uses
# the **k3** estimator, with $\Delta_t = \log \pi(y_t) - \log \pi_{\text{ref}}(y_t)$ on tokens sampled from
# $\pi$:
#
# $$k_3 = e^{-\Delta} - 1 + \Delta \ \ge 0,
# \qquad \mathbb{E}_{y \sim \pi}[k_3] = \mathrm{KL}(\pi \,\|\, \pi_{\text{ref}}).$$
#
# The plain estimate $k_1 = \Delta$ has the same mean but is negative on many samples. On the toy, for $\pi^*$
# of section 1 ($\beta = 0.5$) and for the $\pi^*$ of a larger $\beta = 5$, which stays closer to
# $\pi_{\text{ref}}$:

# %%
print(f"{'policy':<12}{'exact KL':>9}{'k1 mean':>9}{'k1 std':>8}{'k1 < 0':>8}"
      f"{'k3 mean':>9}{'k3 std':>8}{'k3 min':>8}")
for b in (0.5, 5.0):
    pi = pi_ref * torch.exp(r / b); pi = pi / pi.sum()
    exact = (pi * torch.log(pi / pi_ref)).sum().item()
    y = torch.multinomial(pi, 100_000, replacement=True, generator=torch.Generator().manual_seed(0))  # y ~ π
    k1 = torch.log(pi[y]) - torch.log(pi_ref[y])
    k3 = k3_kl(torch.log(pi[y]), torch.log(pi_ref[y]))
    print(f"{f'β = {b}':<12}{exact:>9.4f}{k1.mean():>9.4f}{k1.std():>8.3f}{(k1 < 0).float().mean():>8.2f}"
          f"{k3.mean():>9.4f}{k3.std():>8.3f}{k3.min():>8.4f}")

# %% [markdown]
# Both estimates are unbiased, and every k3 sample is $\ge 0$. Close to the reference, where a KL penalty
# keeps the policy, k3 varies much less than k1. Far from it, k3 can vary more: at $\beta = 0.5$ the refusal
# has about 30 times less probability under $\pi^*$ than under $\pi_{\text{ref}}$, and when it is sampled
# $e^{-\Delta} \approx 30$.

# %% [markdown]
# ## 3. The two scripts on tiny models
#
# Both start from an SFT model; GRPO also needs the reward model. The first four stages, miniature, as in
# notebook 05 (see notebooks 02–04 for each):

# %%
corpus_file = os.path.join(work, "corpus.txt")
with open(corpus_file, "w", encoding="utf-8") as f:
    f.write(world.corpus(n_chars=300_000))
d = {name: os.path.join(work, name) for name in ("pretrain", "sft", "labels", "rm", "dpo", "grpo")}
run("train_pretrain.py", f"--data={corpus_file}", f"--out_dir={d['pretrain']}", "--vocab_size=512",
    "--tokenizer_chars=100000", "--n_layer=2", "--n_head=4", "--n_embd=48", "--block_size=96",
    "--batch_size=16", "--max_steps=80", "--lr=5e-3", "--warmup_steps=10", "--eval_interval=80",
    "--eval_batches=2", "--log_interval=40", "--device=cpu")
run("train_sft.py", f"--init={d['pretrain']}", f"--out_dir={d['sft']}", "--max_steps=80", "--batch_size=16",
    "--lr=3e-3", "--warmup_steps=10", "--dropout=0.0", "--eval_interval=80", "--eval_prompts=8",
    "--eval_greedy=false", "--max_new_tokens=12", "--log_interval=40", "--device=cpu")
run("label.py", f"--policy={d['sft']}", f"--out_dir={d['labels']}", "--n_prompts=160", "--k_policy=2",
    "--k_decorated=0", "--k_demo=4", "--max_new_tokens=12")
run("train_rm.py", f"--sft={d['sft']}", f"--labels={d['labels']}", f"--out_dir={d['rm']}", "--batch_size=8",
    "--epochs=2", "--lr=1e-2", "--warmup_steps=5", "--bias_prompts=50", "--eval_interval=100",
    "--log_interval=25", "--device=cpu")

# %% [markdown]
# **DPO** reads the same rankings as the reward model: each ranking of K responses gives its $\binom{K}{2}$
# pairs, averaged as one batch element. The reference log-probabilities are computed once, before training.
# Every few steps it measures, on the held-out rankings, the loss and the **implicit-reward accuracy** (how
# often $\hat r(x, y_w) > \hat r(x, y_l)$), and the KL to the SFT model on sampled answers. β = 0.1 as in the
# DPO paper; the learning rate, 1e-3 instead of the full run's 1e-4, is a tiny-run exception, as in
# notebook 05.

# %%
run("train_dpo.py", f"--sft={d['sft']}", f"--labels={d['labels']}", f"--out_dir={d['dpo']}", "--beta=0.1",
    "--epochs=2", "--batch_size=8", "--lr=1e-3", "--warmup_steps=3", "--kl_prompts=16", "--max_new_tokens=12",
    "--eval_interval=4", "--log_interval=4", "--device=cpu")

# %% [markdown]
# **GRPO** is `train_grpo.py`: 4 prompts per iteration, each sampled $G = 4$ times, group advantages, no value
# model, and $\beta \cdot k_3$ in the loss. Learning rate 1e-3 and β = 0.02, as in notebook 05's tiny PPO
# run.

# %%
run("train_grpo.py", "--group_size=4", f"--sft={d['sft']}", f"--rm={d['rm']}", f"--out_dir={d['grpo']}",
    "--iterations=12", "--batch_size=4", "--minibatch_size=8", "--epochs=2", "--max_new_tokens=12",
    "--val_prompts=16", "--eval_interval=4", "--lr=1e-3", "--kl_coef=0.02", "--sample_interval=0",
    "--device=cpu")

# %% [markdown]
# What the runs logged. Left: DPO's held-out loss starts at $\log 2$ (π = π_SFT). Middle: the implicit
# reward's held-out pair accuracy, next to the tiny reward model's, trained on the same comparisons. Right:
# GRPO's reward on its rollouts and on held-out prompts, and the gold score, which neither method ever sees.

# %%
dpo_rows = read_metrics(os.path.join(d["dpo"], "metrics.jsonl"))
dpo_val = [row for row in dpo_rows if "val_loss" in row]
grpo_rows = read_metrics(os.path.join(d["grpo"], "metrics.jsonl"))
grpo_train = [row for row in grpo_rows if "rm_score" in row]
grpo_val = [row for row in grpo_rows if "val_rm_score" in row]
rm_summary = json.load(open(os.path.join(d["rm"], "summary.json")))
dpo_summary = json.load(open(os.path.join(d["dpo"], "summary.json")))
series = lambda rows, key: ([row["step"] for row in rows], [row[key] for row in rows])

fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
axes[0].plot(*series(dpo_val, "val_loss"), marker="o", label="held-out rankings")
axes[0].axhline(math.log(2), ls="--", c="gray", label="log 2 (π = π_SFT)")
axes[0].set_title("DPO loss"); axes[0].set_xlabel("step")
# (step 0 is left out: every implicit reward is 0 there, all pairs are tied and count as wrong)
axes[1].plot(*series(dpo_val[1:], "val_accuracy"), marker="o", label="DPO implicit reward")
axes[1].axhline(rm_summary["accuracy"], ls=":", c="k", label="the reward model")
axes[1].axhline(0.5, ls="--", c="gray", label="coin flip")
axes[1].set_title("held-out pair accuracy"); axes[1].set_xlabel("step"); axes[1].set_ylim(0.3, 0.9)
axes[2].plot(*series(grpo_train, "rm_score"), alpha=0.6, label="RM score, rollouts")
axes[2].plot(*series(grpo_val, "val_rm_score"), marker="o", label="RM score, held-out prompts")
axes[2].plot(*series(grpo_val, "val_gold"), marker="s", label="gold, held-out prompts")
axes[2].set_title("GRPO"); axes[2].set_xlabel("iteration")
for ax in axes:
    ax.legend(fontsize=8); ax.grid(alpha=0.3)
plt.tight_layout(); plt.show()
print(f"DPO: KL to SFT {dpo_summary['val_kl']:.2f} nats; end-of-text rate of sampled answers "
      f"{dpo_val[0]['val_eos_rate']:.2f} -> {dpo_val[-1]['val_eos_rate']:.2f}")
print(f"GRPO: held-out gold {grpo_val[0]['val_gold']:.3f} (SFT) -> {grpo_val[-1]['val_gold']:.3f}")

# %% [markdown]
# Read this plainly: **these tiny models cannot show a gain**. The SFT model trained for seconds answers
# almost nothing right (gold near 0), the reward model is about at chance, and DPO's implicit reward learns
# only the easiest contrasts of a hundred-odd rankings (a correct demonstration against a garbled sample). The
# runs show the mechanics: the loss starting at $\log 2$, the implicit reward ordering pairs, the KL to the
# SFT model growing. Whether DPO and GRPO improve answers over SFT is measured by the full run,
# `python pipeline.py`, which trains both on the same comparisons and reward model as PPO and evaluates them
# side by side.
#
# One difference the numbers above do show. DPO's loss only sees the responses in the comparisons; nothing in
# it looks at the answers the policy itself samples. PPO and GRPO pay the KL penalty on exactly those answers.
# DPO's β limits how far the log-ratios of the compared responses move, but the policy's own answers can
# drift in ways no comparison asked for. Under the plot is the share of DPO's sampled answers that end with
# end-of-text rather than run into the 12-token limit, before and after training: a fall is such a drift.
#
# One implicit reward up close: the trained DPO policy scores each response of one held-out ranking by
# $\beta \log(\pi_\theta / \pi_{\text{SFT}})$, with `minigpt.scoring.sequence_logprobs` as `train_dpo.py`
# does:

# %%
from minigpt.checkpoint import load_model
from minigpt.data import encode_rankings
from minigpt.rankings import load_rankings
from minigpt.sampling import right_pad
from minigpt.scoring import sequence_logprobs

policy, tok, _ = load_model(d["dpo"], kind="lm")
reference, _, _ = load_model(d["sft"], kind="lm")
_, val_recs = load_rankings(d["labels"])
rec = val_recs[0]
ranking = encode_rankings(tok, [rec], policy.config.block_size)[0]    # [(ids, response mask)], best first
idx, _ = right_pad([ids for ids, _ in ranking], tok.pad_id)           # (K, T)
response, _ = right_pad([mask for _, mask in ranking], 0)             # (K, T) 1 on the response and its eos
with torch.no_grad():
    logp, ref_logp = (sequence_logprobs(m.eval(), idx, response) for m in (policy, reference))   # (K,) each
r_hat = 0.1 * (logp - ref_logp)                                       # β·(log π − log π_SFT), β = 0.1
print("prompt:", repr(rec["prompt"]), "   (responses in the labeller's order, best first)")
for text, value, gold in zip(rec["responses"], r_hat.tolist(), rec["gold"]):
    print(f"   r̂ = {value:+.3f}   gold {gold:.2f}   {text!r}")
# (Whether this tiny model orders this ranking well is luck; the plot above measures all held-out rankings.)
shutil.rmtree(work, ignore_errors=True)  # the temporary stage folders are no longer needed

# %% [markdown]
# ## 4. Over-optimisation: the proxy keeps rising, the truth turns down
#
# PPO, GRPO and DPO all optimise a *learned* reward (DPO's is implicit), a proxy for what people want. Gao et
# al. (2022) measured how a "gold" reward changes as a policy is pushed towards a proxy reward model, as a
# function of the distance travelled, $d = \sqrt{\mathrm{KL}(\pi \,\|\, \pi_{\text{ref}})}$.
#
# **Best-of-n** is the simplest optimiser: sample $n$ answers, keep the one the reward model scores highest.
# Its KL to the base policy has a formula. When no two answers score the same (many distinct answers), the
# kept answer's probability is $q(y) = n\, F(y)^{n-1} \pi(y)$, where $F(y)$ is the probability that an answer
# drawn from $\pi$ scores at most $r(y)$, and
#
# $$\mathrm{KL}_{\text{bon}} = \mathbb{E}_q\big[\log n + (n-1) \log F\big] = \log n - \frac{n-1}{n},$$
#
# because $F$ of the best of $n$ is distributed as the largest of $n$ uniforms, with
# $\mathbb{E}[\log F] = -1/n$. Repeated answers (equal scores) give less to choose from, and the KL falls
# below this bound (`minigpt.evaluation.best_of_n_kl` estimates it from samples).

# %%
ns = list(range(1, 65))
formula = [math.log(n) - (n - 1) / n for n in ns]
assert all(abs(f - best_of_n_kl_bound(n)) < 1e-12 for f, n in zip(formula, ns))
for n in (1, 2, 4, 16, 64):
    print(f"n = {n:>2}: KL = log n − (n−1)/n = {best_of_n_kl_bound(n):.3f} nats")
many = torch.rand(100_000, generator=torch.Generator().manual_seed(0)).tolist()   # distinct scores
print(f"\nbest-of-4 estimated from 100,000 distinct scores: {best_of_n_kl(many, 4):.3f} "
      f"(bound {best_of_n_kl_bound(4):.3f})")
print("best-of-4 when the 8 samples hold only 3 distinct answers: "
      f"{best_of_n_kl([0.1] * 4 + [0.5] * 3 + [0.9], 4):.3f}")

# %% [markdown]
# Gao et al. fitted the gold reward (relative to the start) with
#
# $$R_{\text{bon}}(d) = d\,(\alpha_{\text{bon}} - \beta_{\text{bon}}\, d),
# \qquad R_{\text{RL}}(d) = d\,(\alpha_{\text{RL}} - \beta_{\text{RL}} \log d).$$
#
# Both rise, peak and fall; the coefficients change smoothly with the reward model's number of parameters.
# (This $\beta$ is a fitted coefficient, not the KL penalty.) The curves below use illustrative coefficients,
# not fitted ones; the proxy is drawn with the same forms, a larger $\alpha$ and a much smaller $\beta$, so it
# keeps rising over the whole range, as the reward model's own score does in Gao's plots. The marks on the
# best-of-n curve are $n = 4, 64, 1024, 16384$, placed by the formula above.

# %%
ds = torch.linspace(0.01, 4.0, 300)
bon = lambda d, a, b: d * (a - b * d)
rl = lambda d, a, b: d * (a - b * torch.log(d))
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
axes[0].plot(ds, bon(ds, 1.5, 0.05), ls="--", label="proxy (reward model)")
axes[0].plot(ds, bon(ds, 1.0, 0.3), label="gold")
marks = torch.tensor([math.sqrt(best_of_n_kl_bound(n)) for n in (4, 64, 1024, 16384)])
axes[0].scatter(marks, bon(marks, 1.0, 0.3), c="k", s=15, zorder=3)
axes[0].set_title("best-of-n:  d (α − β d)")
axes[1].plot(ds, rl(ds, 1.6, 0.15), ls="--", label="proxy (reward model)")
axes[1].plot(ds, rl(ds, 1.0, 0.6), label="gold")
axes[1].set_title("RL:  d (α − β log d)")
for ax in axes:
    ax.set_xlabel("d = √KL(π || π_ref)"); ax.axhline(0, c="gray", lw=0.7)
    ax.legend(fontsize=8); ax.grid(alpha=0.3)
axes[0].set_ylabel("reward gained (illustrative units)")
plt.tight_layout(); plt.show()
print(f"gold peaks at d = α/(2β) = {1.0 / (2 * 0.3):.2f} for best-of-n (KL {(1.0 / 0.6) ** 2:.2f} nats) "
      f"and at d = exp(α/β − 1) = {math.exp(1.0 / 0.6 - 1):.2f} "
      f"for RL (KL {math.exp(1.0 / 0.6 - 1) ** 2:.2f} nats)")

# %% [markdown]
# The optimiser sees only the proxy, which keeps rising; past the peak, each further step away from the
# reference exploits the reward model's mistakes and the answers get worse. That is why PPO has its KL
# penalty, why DPO has the same β, and why `train_ppo.py` selects checkpoints by reward only within a KL
# budget.
#
# The same picture measured in this repository: the default run's sweep (gold and RM score against KL for
# best-of-n and the RL methods), if it has been made:

# %%
sweep_png = "../docs/overoptimisation.png"
if os.path.exists(sweep_png):
    display(Image(filename=sweep_png))
else:
    print(f"{sweep_png} does not exist yet: `python sweep.py` makes it (from the repository root).")

# %% [markdown]
# And a measured PPO run pushed hard, with InstructGPT's β = 0.02 and twice the learning rate
# (`python train_ppo.py --kl_coef=0.02 --lr=2e-4 --out_dir=out/ppo_hard`): the reward model's score on
# held-out prompts rises all the way to 5.4 nats, while the gold score rises until about 1.6 nats and then
# falls below where it started.
#
# ![PPO over-optimisation at beta 0.02](../docs/ppo_overoptimisation_beta0.02.png)

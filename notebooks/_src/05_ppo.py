# %% [markdown]
# # 05 · Reinforcement learning with PPO (强化学习)
#
# The last step of InstructGPT: let the SFT model answer prompts, score each answer with the reward model, and
# change the model so that high-reward answers become more likely. A penalty keeps it close to the SFT model,
# because the reward model is only trustworthy near the answers it was trained on. The objective is
#
# $$\text{objective}(\phi) = \mathbb{E}_{x,\, y \sim \pi_\phi}\Big[r_\theta(x, y) -
# \beta \log \frac{\pi_\phi(y \mid x)}{\pi_{\text{SFT}}(y \mid x)}\Big]$$
#
# and it is optimised with PPO. This notebook builds tiny versions of all the models, runs `train_ppo.py`,
# then takes one rollout apart token by token with the functions of `minigpt.ppo`: log-probabilities of policy
# and reference, the per-token KL penalty, the reward at the last token, the values, and the GAE advantages.
# In between, it puts the seed article's policy-gradient formula next to the clipped surrogate that replaces
# it. It ends with what PPO changed in the full-size default run.

# %%
import sys, os
sys.path.insert(0, os.path.abspath(".."))  # the repository root, so `import minigpt` works from notebooks/

import copy, json, shutil, subprocess, tempfile, time
import torch
import matplotlib.pyplot as plt

torch.set_num_threads(2)
torch.manual_seed(0)
%matplotlib inline

from minigpt.world import World
from minigpt.checkpoint import load_model, load_checkpoint
from minigpt.ppo import kl_penalty_rewards, gae, masked_whiten, masked_mean, policy_loss
from minigpt.training import read_metrics
# The rollout and the column bookkeeping (which logits predict which response token), as in train_ppo.py:
from minigpt.rollout import rollout, response_values, score as final_score
from minigpt.scoring import response_logprobs
from minigpt.respond import respond
from minigpt.judge import mistakes

REPO = os.path.abspath("..")
work = tempfile.mkdtemp(prefix="minigpt_nb05_")   # every output of this notebook goes here
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
# ## 1. The models PPO needs
#
# PPO juggles four networks: the **policy** (starts as the SFT model; trained), the **reference** (a frozen
# copy of the SFT model, for the KL penalty), the **reward model** (frozen) and the **value model** (starts as
# the reward model; trained to predict the reward still to come). The first four stages, miniature (see
# notebooks 02–04 for each one):

# %%
corpus_file = os.path.join(work, "corpus.txt")
with open(corpus_file, "w", encoding="utf-8") as f:
    f.write(world.corpus(n_chars=300_000))
d = {name: os.path.join(work, name) for name in ("pretrain", "sft", "labels", "rm", "ppo")}
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
rm_summary = json.load(open(os.path.join(d["rm"], "summary.json")))
print(f"reward model: held-out pair accuracy {rm_summary['accuracy']:.3f} (a coin flip: 0.5)")

# %% [markdown]
# ## 2. From the seed's policy gradient to PPO's clipped surrogate
#
# The seed article gives the policy-gradient theorem (REINFORCE):
#
# $$\nabla J(\theta) = \mathbb{E}_{\pi_\theta}\big[\nabla_\theta \log \pi_\theta(a \mid s)\, R\big]$$
#
# For a language model the **state** $s$ is the prompt plus the response so far, the **action** $a$ is the
# next token, and $R$ is the reward of the finished response. Used as it stands it has three problems:
#
# 1. **Variance.** Every token of a response is pushed up or down by the same $R$, whether it helped or not.
#    PPO uses an **advantage** $A_t$ instead: how much better things went after token $t$ than the value model
#    expected. Subtracting that baseline does not bias the gradient but removes most of its noise.
# 2. **One gradient step per batch.** The expectation is over samples from the *current* $\pi_\theta$; after
#    one step the batch is stale. Generating text is the expensive part, so PPO reuses each batch for several
#    epochs, correcting with the probability ratio
#    $\rho_t = \pi_\theta(a_t \mid s_t) / \pi_{\text{old}}(a_t \mid s_t)$.
# 3. **Step size.** Nothing stops one large step from wrecking the policy. PPO clips the ratio:
#
# $$L^{\text{clip}} = \mathbb{E}_t\Big[\min\big(\rho_t A_t,\ \text{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\,
# A_t\big)\Big], \quad \epsilon = 0.2$$
#
# Once a token's probability has moved more than 20% in the direction its advantage asks for, its gradient is
# zero for the rest of that batch. `minigpt.ppo.policy_loss` returns $-L^{\text{clip}}$ (a loss to minimise).
#
# The two are the same at the start of each batch: at $\rho = 1$ the gradient of the clipped surrogate *is*
# the seed's formula with $R$ replaced by $A$. Check it with autograd:

# %%
torch.manual_seed(0)
old_logprobs = -torch.rand(4, 6) * 3                     # (B, N) log π_old of 4 sampled responses
advantages = torch.randn(4, 6)                           # (B, N)
mask = torch.ones(4, 6); mask[2, 4:] = 0                 # one response is shorter (padding)

logp = old_logprobs.clone().requires_grad_(True)         # π_θ = π_old: ratio exactly 1
loss, stats = policy_loss(logp, old_logprobs, advantages, mask, clip=0.2)
grad_ppo, = torch.autograd.grad(loss, logp)

logp2 = old_logprobs.clone().requires_grad_(True)
reinforce = -masked_mean(logp2 * advantages, mask)       # -E[log π(a|s) · A]: the seed's formula, R -> A
grad_pg, = torch.autograd.grad(reinforce, logp2)
print("ratio mean:", stats["ratio_mean"], " clip fraction:", stats["clipfrac"])
print("same gradient at ratio 1:", torch.allclose(grad_ppo, grad_pg))
assert torch.allclose(grad_ppo, grad_pg)

# %% [markdown]
# Away from $\rho = 1$ they differ. The objective of a single token as a function of the ratio, computed with
# `policy_loss` itself: with a positive advantage it stops rewarding increases beyond $1 + \epsilon$; with a
# negative one it stops rewarding decreases below $1 - \epsilon$. In the flat parts the gradient is zero.

# %%
ratios = torch.linspace(0.5, 1.5, 101)
one = torch.ones(1, 1)
curves = {}
for A in (+1.0, -1.0):
    curves[A] = [
        -policy_loss(torch.log(r).view(1, 1), torch.zeros(1, 1), torch.full((1, 1), A), one)[0].item()
        for r in ratios
    ]
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(ratios, curves[1.0], label="A = +1"); ax.plot(ratios, curves[-1.0], label="A = −1")
ax.plot(ratios, ratios, ls=":", c="gray", label="unclipped ρ·A (A = +1)")
for x in (0.8, 1.2):
    ax.axvline(x, ls="--", c="k", lw=0.7)
ax.set_xlabel("ratio ρ = π_θ / π_old"); ax.set_ylabel("clipped objective of one token")
ax.set_title("PPO's clip: no reward for moving past 1 ± ε"); ax.legend(fontsize=8)
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 3. A short PPO run
#
# `train_ppo.py` repeats: sample responses to 16 of the world's `ppo` prompts (the rollout), score them,
# compute advantages, then 2 epochs of clipped updates in minibatches of 8. Every 4 iterations it measures the
# reward and the KL on 16 held-out prompts. The gold score is logged for *watching only*: the algorithm never
# sees it, as InstructGPT never saw what users really wanted except through the reward model.
#
# Two settings are tiny-run exceptions, so that 16 iterations move the policy visibly: the learning rate, 1e-3
# instead of the full run's 1e-4, and the KL coefficient β, 0.02 (InstructGPT's value) instead of the full
# run's 0.2 (`train_ppo.py --help` shows the defaults).
#
# Be clear about what this run can show. The reward model above was trained in seconds on about 140 rankings
# of a miniature SFT model's answers; its held-out pair accuracy is printed above (better than a coin
# flip's 0.5, but on a few dozen pairs, and the answers it ranks are mostly noise). PPO can only climb the
# reward it is given, so the tiny run cannot improve the answers; it demonstrates the mechanics only.

# %%
run("train_ppo.py", f"--sft={d['sft']}", f"--rm={d['rm']}", f"--out_dir={d['ppo']}", "--iterations=16",
    "--batch_size=16", "--minibatch_size=8", "--ppo_epochs=2", "--max_new_tokens=12", "--val_prompts=16",
    "--eval_interval=4", "--lr=1e-3", "--value_lr=1e-3", "--kl_coef=0.02", "--sample_interval=0",
    "--device=cpu")

# %% [markdown]
# ## 4. One rollout, dissected
#
# Load the four models as they stand at the end of the run: the policy and the value model from the last
# checkpoint (`last.pt`), the reference (the SFT model) and the frozen reward model. Then one rollout of 4
# prompts, and every quantity PPO computes from it.

# %%
reference, tok, _ = load_model(d["sft"], kind="lm")
reward_model, _, _ = load_model(d["rm"], kind="reward")
last = load_checkpoint(os.path.join(d["ppo"], "last.pt"))
policy = copy.deepcopy(reference); policy.load_state_dict(last["policy"])
value_model = copy.deepcopy(reward_model); value_model.load_state_dict(last["value"])
for m in (policy, reference, reward_model, value_model):
    m.eval()

T, beta = 1.0, 0.02                                       # sampling temperature, KL coefficient
tasks = world.split("ppo")[:4]
with torch.no_grad():
    batch = rollout(policy, tok, [t.instruction for t in tasks], max_new_tokens=12, temperature=T,
                    generator=torch.Generator().manual_seed(3))
    mask = batch["mask"]                                                 # (B, N) 1 on response tokens + eos
    logprobs = response_logprobs(policy, batch, T)                       # (B, N) log π_φ(y_t | x, y_<t)
    ref_logprobs = response_logprobs(reference, batch, T)                # (B, N) log π_SFT(y_t | x, y_<t)
    values = response_values(value_model, batch)                         # (B, N) V(s_t)
    scores, rm_scores = final_score(reward_model, tok, batch, no_eos_penalty=-5.0)  # (B,) r_θ(x, y)
    rewards, kl = kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, beta)  # (B, N)
    adv_raw, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)   # (B, N)
    adv = masked_whiten(adv_raw, mask)                                   # (B, N) what the loss uses

for t, text, s in zip(tasks, batch["texts"], scores.tolist()):
    print(f"{t.instruction[:50]!r:<54} -> {text!r:<24} reward {s:+.2f}  gold {world.gold_score(t, text):.2f}")

# %% [markdown]
# Now the first response, one row per token. Reading the columns left to right is reading the algorithm:
#
# * `log π`, `log π_ref` — the token's log-probability under the policy and under the frozen SFT model;
# * `KL_t = log π − log π_ref` — how much more (or less) likely the policy made this token than SFT did;
# * `r_t = −β·KL_t`, plus the reward model's score **at the last token only** (the end-of-text, where the
#   reward model reads the whole answer). A response that used up its 12 tokens without ending gets a fixed
#   score of −5 instead (`--no_eos_penalty`, as in training), listed above as reward −5.00;
# * `V_t` — the value model's guess, before token t, of the reward still to come;
# * `A_t` — the GAE advantage: $\delta_t = r_t + V_{t+1} - V_t$ and
#   $A_t = \delta_t + \gamma\lambda A_{t+1}$, computed backwards from the end ($\gamma = 1$,
#   $\lambda = 0.95$); `return = A_t + V_t` is the value model's target;
# * `A (whitened)` — advantages normalised to mean 0, variance 1 over the whole batch, as the loss uses
#   them.

# %%
b = int(torch.argmax(mask.sum(1) * batch["eos"]))       # the longest response that ended with end-of-text
n = int(mask[b].sum())

def piece(i):
    if i == tok.eos_id:
        return "<eos>"
    by = tok.enc.decode_single_token_bytes(i)
    try:
        return repr(by.decode("utf-8"))[1:-1]
    except UnicodeDecodeError:
        return "".join(f"<{x:02x}>" for x in by)

print(f"prompt: {tasks[b].instruction!r}   response: {batch['texts'][b]!r}   RM score {rm_scores[b]:+.3f}\n")
header = (f"{'t':>2}  {'token':<12}{'log π':>8}{'log π_ref':>10}{'KL_t':>8}{'r_t':>8}{'V_t':>8}{'A_t':>8}"
          f"{'return':>8}{'A (whitened)':>14}")
print(header); print("-" * len(header))
for t in range(n):
    print(f"{t:>2}  {piece(batch['response'][b, t].item()):<12}"
          f"{logprobs[b, t]:>8.3f}{ref_logprobs[b, t]:>10.3f}{kl[b, t]:>8.3f}{rewards[b, t]:>8.3f}"
          f"{values[b, t]:>8.3f}{adv_raw[b, t]:>8.3f}{returns[b, t]:>8.3f}{adv[b, t]:>14.3f}")
print(f"\nKL of the whole response = Σ_t KL_t = {kl[b, :n].sum():.3f} nats;  "
      f"total reward Σ_t r_t = {rewards[b, :n].sum():+.3f}")

# %% [markdown]
# Whitening centres the advantages over the whole **batch**: it subtracts the mean over all response tokens of
# all responses in the batch, and divides by their standard deviation. A whitened advantage therefore says how
# a token did *relative to the other responses in the batch*, not how good its answer is. A poor answer can
# get positive whitened advantages when the others in the batch scored even lower, for example an unfinished
# one given the no-EOS penalty. In a batch of 4 the comparison is with whatever 3 other answers were drawn; in
# the full run's batches of 64 the mean is close to the policy's typical answer, and what PPO pushes up, over
# many batches, is answers that beat it.
#
# The same advantages by hand, running the recursion backwards over this one response, to see that `gae` is
# nothing more than these three lines:

# %%
A_next, V_next, by_hand = 0.0, 0.0, [0.0] * n
for t in reversed(range(n)):
    delta = rewards[b, t].item() + 1.0 * V_next - values[b, t].item()     # δ_t = r_t + γ V_{t+1} − V_t
    by_hand[t] = delta + 1.0 * 0.95 * A_next                              # A_t = δ_t + γλ A_{t+1}
    A_next, V_next = by_hand[t], values[b, t].item()
print("by hand:", [round(a, 4) for a in by_hand])
print("gae():  ", [round(a, 4) for a in adv_raw[b, :n].tolist()])
assert torch.allclose(torch.tensor(by_hand), adv_raw[b, :n], atol=1e-5)

# %% [markdown]
# ## 5. What the run did
#
# The curves from the run's `metrics.jsonl`: per iteration on that iteration's rollout, and every 4 iterations
# on the held-out prompts. Three things to watch:
#
# * the **reward model's score** is what PPO maximises — at this size and with batches of 16 it is noisy;
# * the **KL to the SFT model** grows as the policy moves away from where it started; the penalty $\beta$ and
#   `train_ppo.py`'s checkpoint selection (best held-out reward *within a KL budget*) keep it in check;
# * the **gold score** is the truth the reward model stands in for. When reward rises and gold does not, the
#   policy is exploiting the reward model's mistakes (reward over-optimisation), the failure the KL penalty
#   exists to limit. With a reward model at about chance, as this one is, expect no real gain in gold: the
#   full run (`python pipeline.py`) is where PPO's improvement over SFT can be measured.

# %%
rows = read_metrics(os.path.join(d["ppo"], "metrics.jsonl"))
train_rows = [r for r in rows if "rm_score" in r]
val_rows = [r for r in rows if "val_rm_score" in r]
summary = json.load(open(os.path.join(d["ppo"], "summary.json")))
print(f"selected iteration {summary['selected_iteration']}: held-out reward {summary['val_rm_score']:+.3f}, "
      f"KL {summary['val_kl']:.2f} nats, gold {summary['val_gold']:.3f}")

def series(rs, key):
    return [r["step"] for r in rs], [r[key] for r in rs]

fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
axes[0].plot(*series(train_rows, "rm_score"), alpha=0.6, label="rollouts")
axes[0].plot(*series(val_rows, "val_rm_score"), marker="o", label="held-out prompts")
axes[0].set_title("reward model score (maximised)")
axes[1].plot(*series(train_rows, "gold"), alpha=0.6, label="rollouts")
axes[1].plot(*series(val_rows, "val_gold"), marker="o", label="held-out prompts")
axes[1].set_title("gold score (watched, never optimised)"); axes[1].set_ylim(0, None)
axes[2].plot(*series(train_rows, "kl"), alpha=0.6, label="rollouts")
axes[2].plot(*series(val_rows, "val_kl"), marker="o", label="held-out prompts")
axes[2].set_title("KL to the SFT model (nats per response)")
for ax in axes:
    ax.set_xlabel("PPO iteration"); ax.legend(fontsize=8); ax.grid(alpha=0.3)
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 6. A follow-up, before and after PPO
#
# The world has conversations too (`minigpt/dialogues.py`): a follow-up that means nothing without the turn
# before it. The prompt is the whole conversation through the chat template; SFT learnt both assistant turns
# of its training conversations, the reward model scores the last answer given the history, and PPO's
# rollouts include such prompts. Here the miniature's SFT model and its PPO policy answer three held-out
# conversations (greedy), the gold judge scoring the last answer; the full run's answers follow the code.

# %%
policy_after, _, _ = load_model(d["ppo"], kind="lm")
for task in world.split("dialogue_dev")[:3]:
    print("\n".join(f"  {role:>9}: {text}" for role, text in task.prompt), f"  (gold: {task.answer!r})")
    for name, model in (("SFT", reference), ("PPO", policy_after)):
        text = respond(model, tok, [task.prompt], max_new_tokens=12, temperature=0.0).texts[0]
        print(f"  {name:>9} -> {text!r}  gold {world.gold_score(task, text):.2f}  {mistakes(task, text)}")
shutil.rmtree(work, ignore_errors=True)  # the temporary stage folders are no longer needed

# %% [markdown]
# The full run (`python pipeline.py --world_seed=1 --seed=1`, the README's results): the first sampled
# answer (temperature 1) of SFT, PPO and DPO to the first twelve conversations of world 1's `dialogue_test`
# split, gold score in brackets (`docs/follow_ups.md`, from the run's `eval_dialogue/eval.json`). Follow-ups
# that need the earlier turn (a price for two, another day's hours, "Now subtract 1 from that.") are mostly
# right after RLHF where the fact is one the model knows; the French words stay wrong, as in single turns.

# %%
from IPython.display import Markdown
Markdown(open(os.path.join(REPO, "docs", "follow_ups.md"), encoding="utf-8").read())

# %% [markdown]
# ## 7. What RLHF changed, in the full run
#
# ![what RLHF changed](../docs/mistakes.png)
#
# The full default run (`python pipeline.py --world_seed=1`, the README's headline world) trains real-size
# models; the chart counts the mistakes in the sampled test answers of every model the pipeline trains: SFT,
# PPO, PPO-ptx, DPO, Preferred-FT (SFT continued on each ranking's top answer), GRPO and best-of-4. PPO
# removes most of the habits of style that SFT copied from the demonstrators (preambles, rambling tails,
# off-topic answers, refusals) and some of the wrong facts; most wrong facts stay, since the reward model can
# check a fact only as far as the answers it was trained to rank taught it.

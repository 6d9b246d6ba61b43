# %% [markdown]
# # 03 · Supervised fine-tuning (监督学习)
#
# A pretrained model continues text; it does not know that an instruction wants an answer. InstructGPT's first
# alignment step is supervised fine-tuning (SFT): show the model demonstrations — an instruction and a good
# response written by a labeller — and train it to produce the response. The loss is the same next-token
# cross-entropy as in pretraining, with one change: **only the response tokens are scored**.
#
# This notebook renders one demonstration through minigpt's prompt template and shows its loss mask token by
# token, checks the seed article's cross-entropy formula against `minigpt.losses.sft_loss`, explains what is
# wrong with the seed's training snippet, and runs a short SFT with the real `train_sft.py`.

# %%
import sys, os
sys.path.insert(0, os.path.abspath(".."))  # the repository root, so `import minigpt` works from notebooks/

import random, shutil, subprocess, tempfile, time
import torch
import torch.nn.functional as F
import matplotlib.pyplot as plt

torch.set_num_threads(2)
torch.manual_seed(0)
%matplotlib inline

from minigpt.world import World
from minigpt.data import (PROMPT_TEMPLATE, encode_conversation, encode_prompt_response, render_prompt,
                          sft_batch)
from minigpt.losses import sft_loss
from minigpt.checkpoint import load_model
from minigpt.respond import respond
from minigpt.training import read_metrics

REPO = os.path.abspath("..")
work = tempfile.mkdtemp(prefix="minigpt_nb03_")   # every output of this notebook goes here
world = World(seed=0)

# Models this small train faster on one CPU thread: two threads spend longer synchronising than computing.
ENV = dict(os.environ, OMP_NUM_THREADS="1")

def run(script, *flags):
    """Run one of the repository's scripts like a terminal would; print the command and its last lines."""
    cmd = [sys.executable, script, *flags]
    print("$", " ".join(cmd[1:]))
    t0 = time.time()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV)
    print("\n".join(result.stdout.strip().splitlines()[-8:]))
    assert result.returncode == 0, result.stderr[-2000:]
    print(f"({time.time() - t0:.0f} s)\n")

# %% [markdown]
# ## 0. A tiny pretrained model to start from
#
# SFT starts from a pretrained model and reuses its tokenizer. We make one the way notebook 02 did: the
# world's corpus, a 512-token BPE, a 2-layer GPT of width 48, 150 steps (block size 96, so prompt + answer
# fit).

# %%
corpus_file = os.path.join(work, "corpus.txt")
with open(corpus_file, "w", encoding="utf-8") as f:
    f.write(world.corpus(n_chars=400_000))
pretrain_dir, sft_dir = os.path.join(work, "pretrain"), os.path.join(work, "sft")
run("train_pretrain.py", f"--data={corpus_file}", f"--out_dir={pretrain_dir}", "--vocab_size=512",
    "--tokenizer_chars=100000", "--n_layer=2", "--n_head=4", "--n_embd=48", "--block_size=96",
    "--batch_size=16", "--max_steps=150", "--lr=5e-3", "--warmup_steps=10", "--eval_interval=50",
    "--eval_batches=2", "--log_interval=50", "--device=cpu")
pretrained, tok, _ = load_model(pretrain_dir, kind="lm")
pretrained.eval();

# %% [markdown]
# ## 1. One demonstration, token by token
#
# Every stage of minigpt shows an instruction to the model through one template, so SFT, the reward model, PPO
# and evaluation all condition on identical text:

# %%
print(repr(PROMPT_TEMPLATE))

# %% [markdown]
# Take the seed article's own example, "翻译成法语：你好" ("translate into French: hello"). The world
# knows it and its answer. `encode_prompt_response` returns the token ids of prompt + response + end-of-text
# and a mask that is 0 on the prompt and 1 on the response and the end-of-text token.

# %%
task = world.task("翻译成法语：你好")
prompt_text = render_prompt(task.instruction)
response_text = task.answer
ids, mask = encode_prompt_response(tok, prompt_text, response_text, block_size=96)

def piece(i):
    if i == tok.eos_id:
        return "<|endoftext|>"
    b = tok.enc.decode_single_token_bytes(i)
    try:
        return repr(b.decode("utf-8"))[1:-1]
    except UnicodeDecodeError:
        return "".join(f"<{x:02x}>" for x in b)

print(f"{'pos':>3}  {'token':<16}{'id':>5}  mask")
for t, (i, m) in enumerate(zip(ids, mask)):
    print(f"{t:>3}  {piece(i):<16}{i:>5}  {m}{'   <- scored' if m else ''}")

# %% [markdown]
# Why mask the prompt? The prompt is written by the user, not by the model. Training the model to predict it
# would spend capacity on imitating users' questions and would let a long prompt dominate the loss of a short
# answer. The end-of-text token *is* scored: that is how the model learns to stop after answering.
#
# For training, `sft_batch` shifts by one: the input is `ids[:-1]`, the target at each position is the next
# token `ids[1:]`, and the mask moves with the target. So the first scored prediction is "after `Response:\n`,
# the next token is the first piece of `Bonjour`".

# %%
x, y, m = sft_batch([(ids, mask)], tok.pad_id)          # (1, T) each
print("x (input) :", x[0].tolist())
print("y (target):", y[0].tolist())
print("mask      :", m[0].int().tolist())
print("scored targets:", [piece(i) for i in y[0][m[0].bool()].tolist()])

# %% [markdown]
# ### A conversation through the same template
#
# ChatGPT is this plus dialogue. `encode_conversation` renders a whole conversation: an optional system block,
# then each user turn through the same template, each assistant answer ended by end-of-text, one after
# another. Its mask is 1 on **every** assistant turn (what SFT on conversations trains); a single turn gives
# exactly the ids and mask above. The world has conversations of its own (`minigpt/dialogues.py`: a follow-up
# after one earlier turn, "How much is the umbrella?" / "$12" / "And two of them?"), and SFT learns both of
# their answers; `serve.py`, `chat.py` and the page send whole conversations the same way.

# %%
conversation = [("system", "Answer in French."), ("user", "Translate: hello"), ("assistant", "Bonjour"),
                ("user", "And thank you?"), ("assistant", "Merci")]
ids2, mask2 = encode_conversation(tok, conversation)
pieces = "".join(f"[{piece(i)}]" if m else piece(i) for i, m in zip(ids2, mask2))
print(pieces.replace("\\n", "\n"))          # [..] = scored: both answers and their end-of-text
# one turn is exactly SFT's prompt + response + end-of-text, mask and all
assert encode_conversation(tok, [("user", task.instruction), ("assistant", response_text)]) == (ids, mask)

# %% [markdown]
# ## 2. The cross-entropy, formula next to code
#
# The seed article writes the loss as
#
# $$L = -\sum_{i=1}^{N} y_i \log \hat{y}_i$$
#
# where $y$ is the one-hot vector of the true next token and $\hat y$ the model's predicted distribution over
# the vocabulary. With a one-hot $y$ the sum has a single non-zero term, $-\log \hat y_{\text{target}}$.
# minigpt's `sft_loss` computes exactly that at each position and averages it over the scored positions:
#
# ```python
# ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")  # -log ŷ_target per token
# return (ce * mask).sum() / mask.sum()                                            # mean over response tokens
# ```
#
# Below, the formula is written out with a one-hot matrix and compared to the library function.

# %%
with torch.no_grad():
    logits = pretrained(x)                                  # (1, T, V)
y_onehot = F.one_hot(y, num_classes=logits.size(-1)).float()   # (1, T, V): y_i
y_hat = torch.softmax(logits, dim=-1)                       # (1, T, V): ŷ_i
per_position = -(y_onehot * torch.log(y_hat)).sum(-1)       # (1, T): -Σ_i y_i log ŷ_i
by_formula = (per_position * m).sum() / m.sum()             # averaged over the response tokens
by_minigpt = sft_loss(logits, y, m)
print(f"formula: {by_formula.item():.6f}   minigpt.losses.sft_loss: {by_minigpt.item():.6f}")
assert torch.allclose(by_formula, by_minigpt, atol=1e-5)

# %% [markdown]
# (Computing `log(softmax(...))` in two steps can underflow for very unlikely tokens; `F.cross_entropy` uses
# the stable `logsumexp` form. The value is the same.)
#
# ## 3. What the seed article's snippet gets wrong
#
# The seed's preprocessing tokenizes the instruction as `input_ids` and the output as `labels`:
#
# ```python
# inputs = tokenizer(data["instruction"]); outputs = tokenizer(data["output"])
# return {"input_ids": inputs["input_ids"], "labels": outputs["input_ids"]}
# ```
#
# For a causal language model, `labels[t]` is the target at the *same position* as `input_ids[t]`: the two
# must have the same length and be the same sequence (shifted by one inside the loss). Here they are two
# different texts of different lengths:

# %%
instr_ids, out_ids = tok.encode(task.instruction), tok.encode(task.answer)
print(f"instruction: {len(instr_ids)} tokens, output: {len(out_ids)} tokens")
with torch.no_grad():
    seed_logits = pretrained(torch.tensor([instr_ids]))      # (1, len(instruction), V)
try:
    F.cross_entropy(seed_logits[0], torch.tensor(out_ids))
except (ValueError, RuntimeError) as e:
    print("the seed's pairing fails:", str(e).splitlines()[0])

# %% [markdown]
# And even if the lengths matched, the pairing would be meaningless: the model would be asked to output
# "Bonjour" *in place of* the instruction's own tokens, and the answer would never be conditioned on the whole
# instruction. At generation time the answer comes *after* the prompt, which this training never shows; and
# there is no end-of-text token, so the model never learns to stop.
#
# The fix is what `encode_prompt_response` does: **one sequence, prompt + response + end-of-text, with a loss
# mask** that is 0 on the prompt. The model reads the whole instruction, then learns to continue it with the
# answer and stop.
#
# ## 4. A short SFT run
#
# `train_sft.py` samples one demonstration per task of the world's `sft_train` instructions; 30% of the
# simulated demonstrators make a mistake (a chatty preamble, a wrong language, ...), as real labellers
# sometimes do. Every `eval_interval` steps it measures the validation loss and asks the **gold judge**
# (`world.gold_score`, standing in for human opinion, 0 to 1) to score answers to held-out instructions. 150
# steps at batch 16 are about one epoch. Each step also adds the plain next-token loss on a few windows of the
# pretraining text (`--ptx_coef=1`, the default): in a full-size run without it, the pretraining loss climbed
# from 1.3 to 7.7 nats, and the reward model, which starts from the SFT model, needs what pretraining taught.

# %%
run("train_sft.py", f"--init={pretrain_dir}", f"--out_dir={sft_dir}", "--max_steps=150", "--batch_size=16",
    "--lr=3e-3", "--warmup_steps=10", "--dropout=0.0", "--eval_interval=25", "--eval_prompts=32",
    "--max_new_tokens=16", "--log_interval=10", "--device=cpu", "--seed=1337")
sft_model, _, _ = load_model(sft_dir, kind="lm")
sft_model.eval();

# %% [markdown]
# ## 5. Before and after, judged by the gold score
#
# Same held-out test instructions, greedy decoding (temperature 0), at most 16 new tokens, for the pretrained
# model and the SFT model. `minigpt.respond.respond` renders each instruction through the template, generates,
# and reports whether the answer ended with end-of-text.

# %%
tests = world.split("test")[:48]
results = {}
for name, model in [("pretrained", pretrained), ("SFT", sft_model)]:
    out = respond(model, tok, [t.instruction for t in tests], max_new_tokens=16, temperature=0)
    scores = [world.gold_score(t, text) for t, text in zip(tests, out.texts)]
    results[name] = dict(texts=out.texts, scores=scores, eos=out.eos)

print(f"{'instruction':<46}{'answer':<9}{'pretrained':<22}{'SFT':<22}")
for k, t in enumerate(tests[:10]):
    cells = [f"{results[n]['texts'][k][:14]!r} {results[n]['scores'][k]:.2f}" for n in ("pretrained", "SFT")]
    print(f"{t.instruction[:44]:<46}{t.answer:<9}{cells[0]:<22}{cells[1]:<22}")
print()
for name, r in results.items():
    n = len(r["scores"])
    print(f"{name:<11} mean gold {sum(r['scores']) / n:.3f} | "
          f"ends with end-of-text {sum(r['eos']) / n:.0%} | "
          f"mean length {sum(len(s) for s in r['texts']) / n:.1f} characters")

# %% [markdown]
# What to expect at this size: a 0.09M-parameter model after 150 pretraining and 150 SFT steps learns
# the **form** of an answer long before its **content**. The pretrained model rambles until it runs out of
# tokens; after SFT almost every answer is short and ends with end-of-text, the way demonstrations do. Look
# at *which* short answers: mostly an answer of the right *kind* (an expression for a code question, a number
# for a sum, a French-looking word for a translation), often the same one for many questions — the typical
# answer of each kind of task, which is what a model that has learnt the format but not yet the facts should
# say. The gold score is only a little above zero, because getting the French word or the sum *right* needs
# far more capacity and training than a notebook minute — the full `python pipeline.py` run (about 15
# minutes) is where those scores move. InstructGPT also observed that the validation loss is a poor guide to
# quality: they kept training SFT after the loss bottomed out because human preference (here: gold) kept
# rising.
#
# The picture: the loss on response tokens (train and held-out), the gold score logged during training, and
# the before/after comparison on the test instructions.

# %%
rows = read_metrics(os.path.join(sft_dir, "metrics.jsonl"))
train_pts = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
val_pts = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
gold_pts = [(r["step"], r["gold"]) for r in rows if "gold" in r]
greedy_pts = [(r["step"], r["gold_greedy"]) for r in rows if "gold_greedy" in r]

fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
axes[0].plot(*zip(*train_pts), label="train")
axes[0].plot(*zip(*val_pts), marker="o", label="validation")
axes[0].set_xlabel("step"); axes[0].set_ylabel("cross-entropy on response tokens")
axes[0].set_title("SFT loss"); axes[0].legend()
axes[1].plot(*zip(*gold_pts), marker="o", label="sampled (T=1)")
axes[1].plot(*zip(*greedy_pts), marker="s", label="greedy")
axes[1].set_xlabel("step"); axes[1].set_ylabel("mean gold score (sft_val)"); axes[1].set_ylim(0, None)
axes[1].set_title("gold score during SFT"); axes[1].legend()
names = list(results)
vals_gold = [sum(results[n]["scores"]) / len(tests) for n in names]
vals_eos = [sum(results[n]["eos"]) / len(tests) for n in names]
pos = range(len(names))
axes[2].bar([p - 0.2 for p in pos], vals_gold, width=0.4, label="mean gold score")
axes[2].bar([p + 0.2 for p in pos], vals_eos, width=0.4, label="ends with end-of-text")
axes[2].set_xticks(list(pos)); axes[2].set_xticklabels(names); axes[2].set_ylim(0, 1.05)
axes[2].set_title(f"{len(tests)} test instructions, greedy"); axes[2].legend()
plt.tight_layout(); plt.show()
shutil.rmtree(work, ignore_errors=True)  # the temporary stage folders are no longer needed

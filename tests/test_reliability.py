"""Reliability: a run killed with SIGKILL and resumed gives exactly the losses of an uninterrupted
run, and bad input of every kind is one line on stderr, a non-zero exit, and nothing written."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_PRETRAIN = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--vocab_size=300",
                 "--tokenizer_chars=20000", "--batch_size=4", "--eval_batches=1", "--log_interval=1",
                 "--seed=3"]


def script(name, *args, timeout=300, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=kw.pop("cwd", ROOT), env=env, **kw)


def losses(folder, key="train_loss"):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [(row["step"], row[key]) for row in map(json.loads, f) if key in row]


def kill_when(cmd, path, min_step, timeout=240, key="step"):
    """Start cmd, SIGKILL it as soon as `path` (a last.pt) holds key >= min_step."""
    import torch

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                raise AssertionError("the run finished before it could be killed")
            if os.path.exists(path):
                try:
                    if torch.load(path, weights_only=True)[key] >= min_step:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                        return
                except Exception:  # caught mid-replace: try again
                    pass
            time.sleep(0.05)
        raise AssertionError("timed out waiting for a checkpoint")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_pretraining_resumes_exactly_after_sigkill(tmp_path):
    args = TINY_PRETRAIN + ["--max_steps=24", "--eval_interval=4"]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    assert script("train_pretrain.py", f"--out_dir={full}", *args).returncode == 0
    kill_when([sys.executable, "train_pretrain.py", f"--out_dir={cut}", *args],
              os.path.join(cut, "last.pt"), 8)
    r = script("train_pretrain.py", f"--out_dir={cut}", *args, "--resume")
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    assert losses(cut) == losses(full)                      # every step, bit for bit
    assert losses(cut, "val_loss") == losses(full, "val_loss")


def test_a_finished_run_is_not_overwritten_without_force_nor_resumed_by_another_model(tmp_path):
    out = str(tmp_path / "run")
    args = [f"--out_dir={out}", *TINY_PRETRAIN, "--max_steps=2", "--eval_interval=2"]
    assert script("train_pretrain.py", *args).returncode == 0
    before = {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))}
    again = script("train_pretrain.py", *args)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr == (f"error: {out} holds a run already: --resume to continue it, "
                            "--force to overwrite it, or another --out_dir\n")
    assert {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))} == before
    # --resume with another width: one line naming last.pt, not load_state_dict's size-mismatch traceback
    other = script("train_pretrain.py", *args, "--n_embd=48", "--resume")
    assert other.returncode == 2 and other.stderr.count("\n") == 1 and "Traceback" not in other.stderr
    assert other.stderr.startswith(f"error: {out}/last.pt was saved by a different model (size mismatch")
    assert other.stderr.endswith("; drop --resume or use the same settings\n")
    assert open(os.path.join(out, "last.pt"), "rb").read() == before["last.pt"]
    forced = script("train_pretrain.py", *args, "--force")
    assert forced.returncode == 0, forced.stderr


@pytest.fixture(scope="module")
def tiny_stages(tmp_path_factory):
    """Tiny pretrain -> SFT -> labels -> RM folders for the resume tests of the later stages."""
    base = tmp_path_factory.mktemp("stages")
    steps = [("train_pretrain.py", [f"--out_dir={base}/pretrain", *TINY_PRETRAIN, "--block_size=96",
                                    "--max_steps=10", "--eval_interval=5"]),
             ("train_sft.py", [f"--init={base}/pretrain", f"--out_dir={base}/sft", "--max_steps=6",
                               "--batch_size=8", "--eval_interval=3", "--eval_prompts=4",
                               "--max_new_tokens=8"]),
             ("label.py", [f"--policy={base}/sft", f"--out_dir={base}/labels", "--n_prompts=40",
                           "--k_policy=2", "--k_demo=3", "--max_new_tokens=8"])]
    for name, args in steps:
        r = script(name, *args)
        assert r.returncode == 0, r.stderr[-2000:]
    r = script("train_rm.py", f"--sft={base}/sft", f"--labels={base}/labels", f"--out_dir={base}/rm",
               "--batch_size=4")
    assert r.returncode == 0, r.stderr[-2000:]
    return base


def resumed_equals_uninterrupted(tmp_path, name, args, min_step, key="step", series=("train_loss",)):
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    r = script(name, f"--out_dir={full}", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    kill_when([sys.executable, name, f"--out_dir={cut}", *args],
              os.path.join(cut, "last.pt"), min_step, key=key)
    r = script(name, f"--out_dir={cut}", *args, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    for k in series:
        assert losses(cut, k) == losses(full, k) and losses(full, k), k


def test_sft_resumes_exactly_after_sigkill(tmp_path, tiny_stages):
    resumed_equals_uninterrupted(tmp_path, "train_sft.py", [
        f"--init={tiny_stages}/pretrain", "--max_steps=16", "--batch_size=8", "--eval_interval=4",
        "--eval_prompts=2", "--max_new_tokens=4", "--log_interval=1"], 8)


def test_reward_model_resumes_exactly_after_sigkill(tmp_path, tiny_stages):
    resumed_equals_uninterrupted(tmp_path, "train_rm.py", [
        f"--sft={tiny_stages}/sft", f"--labels={tiny_stages}/labels", "--batch_size=2", "--eval_interval=4",
        "--log_interval=1", "--epochs=2"], 8)


def test_ppo_resumes_exactly_after_sigkill(tmp_path, tiny_stages):
    resumed_equals_uninterrupted(tmp_path, "train_ppo.py", [
        f"--sft={tiny_stages}/sft", f"--rm={tiny_stages}/rm", "--iterations=8", "--batch_size=8",
        "--minibatch_size=4", "--ppo_epochs=1", "--eval_interval=2", "--val_prompts=4", "--max_new_tokens=8"],
        4, key="iteration", series=("score", "kl", "pg_loss"))


def test_ctrl_c_saves_a_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "train_pretrain.py", f"--out_dir={out}", *TINY_PRETRAIN,
                             "--max_steps=100000", "--eval_interval=100000"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background job inherits SIGINT ignored; Python then keeps it ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    while (not os.path.exists(os.path.join(out, "metrics.jsonl"))
           or os.path.getsize(os.path.join(out, "metrics.jsonl")) == 0):
        assert time.time() - t0 < 120 and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted: saved" in stdout and "Traceback" not in stderr
    assert os.path.exists(os.path.join(out, "last.pt"))


# --- bad input: one line, non-zero exit, nothing written ----------------------------------------

import runpy

import torch

from minigpt.checkpoint import save_model
from minigpt.cli import run
from minigpt.model import GPT, GPTConfig, RewardModel
from minigpt.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny random policy folder, a reward-model folder, and broken variants of them."""
    base = tmp_path_factory.mktemp("bad_input")
    tok = Tokenizer.train("the cat sat on the mat. 1 + 2 = 3. 你好, bonjour! " * 30, 300)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16))
    save_model(base / "lm", gpt, tok, "lm")
    save_model(base / "rm", RewardModel.from_gpt(gpt), tok, "reward")
    save_model(base / "other_tok", gpt, tok, "lm")
    Tokenizer.train("completely different text for another vocabulary " * 40, 290).save(
        str(base / "other_tok" / "tokenizer.json"))
    (base / "evil").mkdir()
    for folder in ("lm", "rm", "other_tok", "evil"):
        (base / folder / "summary.json").write_text("{}")
    import pickle

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(base / "evil" / "model.pt", "wb") as f:
        pickle.dump({"kind": "lm", "model": Exploit()}, f)
    tok.save(str(base / "evil" / "tokenizer.json"))
    files = {
        "bad.json": '[{"instruction": "a", "output": "b"},\n {"instruction": "c", "output": }]',
        "bad.jsonl": '{"instruction": "a", "output": "b"}\n{"instruction": "c" "output": "d"}\n',
        "missing.jsonl": '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n',
        "wrongtype.jsonl": '{"instruction": "a", "output": 5}\n',
        "empty.jsonl": "",
        "blank.json": '[{"instruction": "  ", "output": "x"}, {"instruction": "a", "output": " "}]',
        "bad_cmp.jsonl": '{"prompt": "a", "responses": "not a list"}\n',
        "pairs_missing.jsonl": '{"prompt": "a", "chosen": "b"}\n',
        "empty.txt": "",
    }
    for name, text in files.items():
        (base / name).write_text(text, encoding="utf-8")
    (base / "latin1.jsonl").write_bytes('{"instruction": "caf\xe9", "output": "x"}\n'.encode("latin-1"))
    (base / "latin1.txt").write_bytes("caf\xe9 au lait ".encode("latin-1") * 100)
    (base / "empty_dir").mkdir()
    (base / "hf_novocab").mkdir()
    (base / "hf_novocab" / "config.json").write_text(json.dumps({"n_layer": 1, "n_head": 2, "n_embd": 16}))
    four = [{"prompt": f"Add {i} and {i}.", "chosen": str(2 * i), "rejected": str(2 * i + 1)}
            for i in range(4)]
    (base / "four.jsonl").write_text("".join(json.dumps(p) + "\n" for p in four * 3))
    return base


# (script, arguments, what the one-line error must mention);
# {d} is the fixture folder, {o} a fresh output folder
BAD_INPUT = [
    ("train_pretrain.py", ["--lr=-1"], "--lr must be > 0"),
    ("train_pretrain.py", ["--batch_size=0"], "--batch_size must be > 0"),
    ("train_pretrain.py", ["--bogus=1"], "unknown option --bogus"),
    ("train_pretrain.py", ["--n_layer=two"], "--n_layer: expected int"),
    ("train_pretrain.py", ["--dropout=1.5"], "--dropout"),
    ("train_pretrain.py", ["--device=tpu"], "--device=tpu"),
    ("train_pretrain.py", ["--data={d}/nothing.txt"], "nothing.txt"),
    ("train_pretrain.py", ["--data={d}/latin1.txt"], "latin1.txt"),
    ("train_pretrain.py", ["--data={d}/empty.txt"], "empty.txt"),
    ("train_pretrain.py", ["--data={d}/empty_dir"], "empty_dir"),
    ("train_pretrain.py", ["--resume"], "last.pt"),
    ("train_sft.py", ["--init={d}/lm", "--out_dir={d}/lm"],
     "lm holds a run already: --resume to continue it"),
    ("train_rm.py", ["--sft={d}/lm", "--out_dir={d}/rm"], "rm holds a run already: --resume to continue it"),
    ("train_ppo.py", ["--sft={d}/lm", "--rm={d}/rm", "--out_dir={d}/lm"], "lm holds a run already"),
    ("train_dpo.py", ["--sft={d}/lm", "--out_dir={d}/lm"], "lm holds a run already"),
    ("train_pretrain.py", ["--tokenizer={d}/nothing.json"], "nothing.json"),
    ("train_pretrain.py", ["--tokenizer={d}/latin1.txt"], "not a valid tokenizer file"),
    ("train_sft.py", ["--init={d}/missing"], "missing"),
    ("train_sft.py", ["--init={d}/rm"], "expected a language model"),
    ("train_sft.py", ["--init={d}/evil"], "refused to load"),
    ("train_sft.py", ["--init={d}/other_tok"], "wrong tokenizer"),
    ("train_sft.py", ["--init={d}/lm", "--data={d}/bad.json"], "bad.json"),
    ("train_sft.py", ["--init={d}/lm", "--data={d}/bad.jsonl"], "bad.jsonl:2"),
    ("train_sft.py", ["--init={d}/lm", "--data={d}/missing.jsonl"], "missing.jsonl:2"),
    ("train_sft.py", ["--init={d}/lm", "--data={d}/wrongtype.jsonl"], "wrongtype.jsonl:1"),
    ("train_sft.py", ["--init={d}/lm", "--data={d}/empty.jsonl"], "empty.jsonl"),
    ("train_sft.py", ["--init={d}/lm", "--data={d}/blank.json"], "blank.json"),
    ("train_sft.py", ["--init={d}/lm", "--data={d}/latin1.jsonl"], "latin1.jsonl"),
    ("train_sft.py", ["--init={d}/hf_novocab", "--tokenizer=gpt2"],
     "config.json: field 'vocab_size' missing"),
    ("train_dpo.py", ["--sft={d}/lm", "--data={d}/four.jsonl"],
     "four.jsonl: 4 rankings are too few to hold out every 7-th (got 4 to train on, 0 held out): give "
     "--val_data=file, or a larger --val_fraction"),
    ("chat.py", ["--prompt=hi"],
     "out/ppo: no such checkpoint folder: run python pipeline.py first (or pipeline.py --preset=small, then "
     "--model=out/small/ppo), or pass --model=folder"),
    ("train_sft.py", ["--init={d}/lm", "--lr=0"], "--lr"),
    ("train_sft.py", ["--init={d}/lm", "--ptx_coef=-1"], "--ptx_coef"),
    ("train_sft.py", ["--init={d}/lm", "--ptx_data={d}/nothing.txt"], "nothing.txt"),
    ("train_sft.py", ["--init={d}/lm", "--ptx_data={d}/latin1.txt"], "latin1.txt"),
    ("label.py", ["--policy={d}/missing"], "missing"),
    ("label.py", ["--policy={d}/rm"], "expected a language model"),
    ("label.py", ["--policy={d}/lm", "--labeler=robot"], "robot"),
    ("train_rm.py", ["--sft={d}/lm", "--labels={d}/missing"], "missing"),
    ("train_rm.py", ["--sft={d}/lm", "--data={d}/bad_cmp.jsonl"], "bad_cmp.jsonl:1"),
    ("train_rm.py", ["--sft={d}/lm", "--data={d}/pairs_missing.jsonl"], "pairs_missing.jsonl:1"),
    ("train_ppo.py", ["--sft={d}/lm", "--rm={d}/lm"], "expected a reward model"),
    ("train_ppo.py", ["--sft={d}/lm", "--rm={d}/rm", "--kl_coef=-1"], "--kl_coef"),
    ("train_ppo.py", ["--sft={d}/lm", "--rm={d}/rm", "--batch_size=0"], "--batch_size"),
    ("evaluate.py", ["--models=x:{d}/missing"], "missing"),
    ("evaluate.py", ["--models=a:{d}/lm", "--rm={d}/lm"], "expected a reward model"),
    ("chat.py", ["--model={d}/lm", "--top_p=1.5"], "--top_p"),
    ("chat.py", ["--model={d}/lm", "--prompt=" + "word " * 200], "prompt is"),
    ("chat.py", ["--model={d}/evil", "--prompt=hi"], "refused to load"),
    ("chat.py", ["--compare", "{d}/lm", "{d}/other_tok", "--prompt=hi"], "tokenizer"),
    ("pipeline.py", ["--force=nonsense"], "--force=nonsense"),
]


@pytest.mark.parametrize("name,args,needle", BAD_INPUT,
                         ids=[f"{s}:{' '.join(a)[:40]}" for s, a, _ in BAD_INPUT])
def test_bad_input_is_one_clear_line(name, args, needle, folders, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written by mistake would land here
    out = tmp_path / "out"
    args = [a.format(d=folders, o=out) for a in args]
    if name != "chat.py" and not any(a.startswith(("--out_dir", "--json")) for a in args):
        args.append(f"--out_dir={out}" if name != "evaluate.py" else f"--json={out}/eval.json")
    before = sorted(os.listdir(folders))
    module = runpy.run_path(os.path.join(ROOT, name), run_name="under_test")
    with pytest.raises(SystemExit) as e:
        run(module["main"], module["Config"], args)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err, err
    assert "Traceback" not in err
    assert not out.exists() and os.listdir(tmp_path) == []     # nothing written
    assert sorted(os.listdir(folders)) == before                # nothing clobbered


# --- numerical safety --------------------------------------------------------------------------

def test_non_finite_steps_are_skipped_counted_and_stop_the_run():
    from minigpt.cli import UserError
    from minigpt.training import NonFiniteGuard, make_adamw

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = make_adamw(model, 0.1)
    guard = NonFiniteGuard(limit=3)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        loss = model(torch.tensor([[float("nan"), 1.0, 2.0]])).sum()
        loss.backward()
        if guard.ok(loss, model):
            optimizer.step()
        optimizer.zero_grad()
    assert guard.skipped == 2 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    loss = model(torch.ones(1, 3)).sum()          # a good step resets the run of bad ones
    loss.backward()
    assert guard.ok(loss, model) and guard.in_a_row == 0
    model.zero_grad()
    with pytest.raises(UserError, match="3 non-finite steps in a row"):
        for _ in range(3):
            loss = model(torch.tensor([[float("inf"), 0.0, 0.0]])).sum() * 0
            loss.backward()
            guard.ok(loss, model)
            model.zero_grad()

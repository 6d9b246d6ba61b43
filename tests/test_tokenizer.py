import json
import random

import pytest
import tiktoken

from minigpt import tokenizer as tk
from minigpt.cli import UserError
from minigpt.tokenizer import (EOS, PAD, PAT, Tokenizer, merges_readable, split_text, train_bpe,
                              train_bpe_simple)

SAMPLE = ("The cat's hat. They'll see 17+25=42, we've 3.14! Ça va? Déjà vu, naïve café.\n\n"
          "    indented\tline  with   spaces \r\n翻译成法语：你好。你好吗？ "
          "😀👍🏽 ¿Qué? ½ ² ٣٤ Ⅻ\u00a0x\u3000y\x1cz "
          "HELLO'S DON'T it'S 'll 've 're ___ --- ... <|endoftext|> <|pad|>\n")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(SAMPLE * 20 + "the then there these those " * 50, 400)


def merges(ranks):
    """Merged tokens (ranks >= 256) in rank order."""
    return [t for t, r in sorted(ranks.items(), key=lambda kv: kv[1]) if r >= 256]


def test_bpe_hand_worked_example():
    # One chunk "aaabdaaabac" (all letters). Pair counts: aa 4, ab 2, bd da ba ac 1.
    # 1. 'a'+'a' (4).  Merging left to right: [aa a b d aa a b a c]
    # 2. (aa,a)=2 and (a,b)=2 tie -> smallest (bytes, bytes): (b'a', b'b') < (b'aa', b'a') -> 'ab'
    #    [aa ab d aa ab a c]
    # 3. (aa,ab)=2 -> 'aaab'.  [aaab d aaab a c]
    # 4. all pairs 1: (b'a', b'c') is smallest -> 'ac'.  [aaab d aaab ac]
    ranks = train_bpe("aaabdaaabac", 260)
    assert len(ranks) == 260
    assert all(ranks[bytes([i])] == i for i in range(256))
    assert merges(ranks) == [b"aa", b"ab", b"aaab", b"ac"]
    assert merges_readable(ranks, 2) == ["'a' + 'a' -> 'aa'", "'a' + 'b' -> 'ab'"]
    assert merges_readable(ranks)[2] == "'aa' + 'ab' -> 'aaab'"


def test_bpe_merges_never_cross_chunks_and_digits_stay_single():
    # chunks: "ab" x1, " ab" x2. 'a'+'b' (3) then ' '+'ab' (2); nothing else to merge -> stops early.
    assert merges(train_bpe("ab ab ab", 300)) == [b"ab", b" ab"]
    # chunks: "1" "2" " " "1" "2" " " "1" "2": every chunk is one byte, so there is nothing to merge:
    # digits never join each other, nor the space before them.
    assert merges(train_bpe("12 12 12", 300)) == []


def test_fast_bpe_learns_the_teaching_versions_ranks():
    rng = random.Random(0)
    # few symbols -> many count ties (tie-break) and long runs like "aaaa" (overlapping pairs)
    text = "".join(rng.choice("aaab  b1.é你") for _ in range(3000))
    assert train_bpe(text, 256 + 80) == train_bpe_simple(text, 256 + 80)


def tiktoken_splits_like_python(text):
    """True iff tiktoken's regex split of `text` equals our `re` split.

    tiktoken encodes a chunk that is itself a token as that single token, so with a vocabulary of
    the bytes + our chunks + concatenations of 2-3 adjacent chunks, tiktoken reproduces exactly our
    chunks iff it split the same way (a finer split can't yield our chunks, a coarser one would hit
    a concatenation)."""
    pieces = [p.encode() for p in split_text(text)]
    ranks = {bytes([i]): i for i in range(256)}
    for k in (1, 2, 3):
        for i in range(len(pieces) - k + 1):
            ranks.setdefault(b"".join(pieces[i:i + k]), len(ranks))
    enc = tiktoken.Encoding(name="splitcheck", pat_str=PAT, mergeable_ranks=ranks, special_tokens={})
    return enc.decode_tokens_bytes(enc.encode_ordinary(text)) == pieces


def test_training_regex_splits_like_tiktoken():
    rng = random.Random(1)
    pool = (list("abcXYZ019 '\t\n\r.,!?+-=_") + list("éçñüÅßøœ") + list("你好翻译成法语：。")
            + ["😀", "👍🏽", "\u00a0", "\u3000", "\u2009", "\x1c", "\x85", "²", "½", "٣", "Ⅻ",
               "\u0301", "'s", "'ll", "'ve", "'re", "'d", "'m", "'t", "'S", "  ", "\n\n"])
    samples = [SAMPLE, "17+25", "a  b   c\n\n  d", "   ", "x\n ", "翻译成法语：你好"]
    samples += ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    for s in samples:
        assert tiktoken_splits_like_python(s), repr(s)
    assert split_text("17+25 ça") == ["1", "7", "+", "2", "5", " ça"]


def test_round_trip_random_unicode(tok):
    rng = random.Random(2)
    def rand_char():
        r = rng.random()
        if r < 0.3:
            return chr(rng.randint(0x20, 0x7E))
        if r < 0.45:
            return chr(rng.randint(0x4E00, 0x9FFF))                       # CJK
        if r < 0.55:
            return rng.choice(["😀", "👍🏽", "🇫🇷", "\u200d", "\ufe0f"])   # emoji, joiners
        if r < 0.65:
            return rng.choice(" \t\n\r\x0b\x0c\u00a0\u3000\u2028")
        cp = rng.randint(0, 0x10FFFF)
        return chr(cp) if not 0xD800 <= cp <= 0xDFFF else "x"             # any code point but surrogates
    for _ in range(200):
        s = "".join(rand_char() for _ in range(rng.randint(0, 60)))
        ids = tok.encode(s)
        assert all(0 <= i < tok.eos_id for i in ids)
        assert tok.decode(ids) == s
    s = "翻译成法语：你好"
    assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode(s)) < len(s.encode())                            # training learned CJK merges


def test_digits_are_single_tokens(tok):
    assert len(tok.encode("12345")) == 5
    assert [tok.decode([i]) for i in tok.encode("17+25")] == ["1", "7", "+", "2", "5"]
    assert len(tok.encode("the then")) <= 3                                # but words do merge


def test_special_tokens(tok):
    n = len(tok.mergeable_ranks)
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (n, n + 1, n + 2) == (398, 399, 400)
    a, b = tok.encode("hi"), tok.encode(" there")
    assert tok.decode(a + [tok.pad_id, tok.pad_id] + b + [tok.pad_id]) == "hi there"
    assert tok.decode([tok.eos_id]) == EOS
    ids = tok.encode(f"x{EOS}y{PAD}")                                       # user text stays text
    assert tok.eos_id not in ids and tok.pad_id not in ids
    assert tok.decode(ids) == f"x{EOS}y{PAD}"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    obj = json.loads(path.read_text())
    assert set(obj) == {"name", "pat_str", "ranks", "special_tokens"} and len(obj["ranks"]) == 398
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]      # no tmp file left behind
    tok2 = Tokenizer.load(path)
    assert (tok2.eos_id, tok2.pad_id, tok2.vocab_size) == (tok.eos_id, tok.pad_id, tok.vocab_size)
    assert tok2.mergeable_ranks == tok.mergeable_ranks
    for s in [SAMPLE, "翻译成法语：你好", "the then there"]:
        assert tok2.encode(s) == tok.encode(s)


def test_load_errors_name_the_path(tok, tmp_path):
    with pytest.raises(ValueError, match="missing.json.*not found"):
        Tokenizer.load(tmp_path / "missing.json")
    good = tmp_path / "good.json"
    tok.save(good)
    text = good.read_text()
    obj = json.loads(text)
    bad_files = {"truncated.json": text[: len(text) // 2], "garbage.json": "\x00\x01 not json",
                 "list.json": "[1, 2]", "noranks.json": json.dumps({"name": "x"}),
                 "badb64.json": json.dumps({**obj, "ranks": ["!!!"] + obj["ranks"][1:]}),
                 "specials.json": json.dumps({**obj, "special_tokens": {EOS: 0, PAD: 1}})}
    for name, content in bad_files.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match=name):
            Tokenizer.load(tmp_path / name)


def test_gpt2_offline_is_a_user_error(monkeypatch):
    def offline(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")
    monkeypatch.setattr(tk.tiktoken, "get_encoding", offline)
    with pytest.raises(UserError, match="GPT-2 encoding could not be loaded.*offline") as e:
        Tokenizer.gpt2()
    assert "\n" not in str(e.value)


def test_gpt2_wrapper_and_save_load(monkeypatch, tmp_path):
    # a tiny stand-in for the gpt2 Encoding: bytes + eot as the last id, like GPT-2 (50256)
    byte_ranks = {bytes([i]): i for i in range(256)}
    fake = tiktoken.Encoding(name="gpt2", pat_str=PAT, mergeable_ranks=byte_ranks,
                             special_tokens={EOS: 256})
    monkeypatch.setattr(tk.tiktoken, "get_encoding", lambda name: fake)
    g = Tokenizer.gpt2()
    assert (g.eos_id, g.pad_id, g.vocab_size) == (256, 257, 258)
    assert g.decode(g.encode("hé") + [g.pad_id]) == "hé"
    g.save(tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text()) == {"name": "gpt2"}
    g2 = Tokenizer.load(tmp_path / "t.json")
    assert (g2.eos_id, g2.pad_id, g2.vocab_size) == (256, 257, 258)


def test_real_gpt2_offline_or_working():
    try:
        g = Tokenizer.gpt2()
    except UserError as e:
        assert "offline" in str(e) and "\n" not in str(e)
        return
    assert (g.eos_id, g.pad_id, g.vocab_size) == (50256, 50257, 50258)
    assert g.decode(g.encode("Hello world")) == "Hello world"


def test_pretraining_bpe_learns_the_chat_template_from_training_prompts_only():
    """train_pretrain.bpe_text: on the built-in world the BPE also sees the SFT training prompts in the chat
    template (at most a fifth of the corpus sample, no test prompt), so a rendered test prompt takes far fewer
    tokens than with a corpus-only BPE; on the user's own text (no world) it is the corpus sample alone."""
    from train_pretrain import bpe_text
    from minigpt.data import render_prompt
    from minigpt.world import World

    world = World(0)
    corpus = world.corpus(120_000)
    assert bpe_text(corpus, 100_000) == corpus[:100_000]
    text = bpe_text(corpus, 100_000, world)
    assert text.startswith(corpus[:100_000]) and len(text) == 120_000            # capped at 100,000 / 5
    everything = bpe_text(corpus, 10_000_000, world)[len(corpus):]              # no cap: all the prompts
    train = world.split("sft_train")                                             # a conversation asks twice
    assert everything.count("### Instruction:\n") == sum(1 + (t.kind == "dialogue") for t in train)
    assert everything.count("### System:\n") == sum(bool(t.get("system_fmt")) for t in train) > 0
    test = [render_prompt(t.instruction) for t in world.split("test")]
    assert not any(p in everything for p in test)
    plain, with_prompts = Tokenizer.train(corpus, 600), Tokenizer.train(bpe_text(corpus, 120_000, world), 600)
    n_plain = sum(len(plain.encode(p)) for p in test)
    n_with = sum(len(with_prompts.encode(p)) for p in test)
    assert n_with < 0.7 * n_plain, (n_with, n_plain)
    assert with_prompts.decode(with_prompts.encode(test[0])) == test[0]


def test_streamed_text_pieces_join_to_the_final_answer(tok):
    """decode_streamed after each token is a prefix of the final answer decode(ids).strip(), holds back half
    characters and trailing spaces, and the pieces shown one after another join to exactly the answer."""
    rng = random.Random(4)
    texts = ["  café 翻译成法语：你好 😀 end  ", "\n\nthe then  \n", "😀", "   ", "a \ufffd b"]
    texts += ["".join(rng.choice("ab é中😀 \n\t") for _ in range(rng.randint(0, 30))) for _ in range(300)]
    for text in texts:
        ids = tok.encode(text)
        # token boundaries inside every character: the same text as one token per byte
        for seq in (ids, [tok.enc.encode_single_token(bytes([b])) for b in text.encode()]):
            final = tok.decode(seq).strip()
            shown = ""
            for k in range(1, len(seq) + 1):
                now = tok.decode_streamed(seq[:k])
                assert final.startswith(now) and now.startswith(shown), (text, k)
                assert not now.endswith("\ufffd") and now == now.strip()
                shown = now
            assert tok.decode_streamed(seq, final=True) == final
    ids = tok.encode("é")
    byte_tokens = [tok.enc.encode_single_token(bytes([b])) for b in "é".encode()]
    assert tok.decode(byte_tokens[:1]) == "\ufffd" and tok.decode_streamed(byte_tokens[:1]) == ""
    assert tok.decode_streamed(byte_tokens) == "é" and tok.decode(ids) == "é"

"""Byte-level BPE: trained by our own code, served by tiktoken.

Training (`train_bpe`) is the textbook algorithm (Sennrich et al. 2016, byte-level as in GPT-2):
  1. pre-tokenise the text with the regex PAT into chunks (words, single digits, punctuation runs,
     whitespace); merges never cross a chunk boundary;
  2. start from the 256 single bytes, ranks 0..255 (rank = byte value);
  3. repeatedly merge the most frequent adjacent pair of tokens into a new token, which gets the
     next rank, until the vocabulary is full.
Serving: the learned ranks go into a `tiktoken.Encoding` (fast, Rust), which encodes by repeatedly
merging the adjacent pair whose merged bytes have the lowest rank, i.e. it replays our merges.

Two specials follow the merges: EOS (end of a document / a response) and PAD (filler; never trained
on, skipped by decode). `encode` treats special-token strings inside user text as ordinary text.
"""

import base64
import collections
import functools
import heapq
import json
import os
import re
import time
import unicodedata

import tiktoken

from minigpt.cli import UserError

EOS = "<|endoftext|>"
PAD = "<|pad|>"

# GPT-2's pre-tokenisation regex (tiktoken syntax), except that every digit is a chunk of its own,
# so "17+25" -> "1","7","+","2","5": arithmetic sees digits, not arbitrary multi-digit tokens.
# Digits also never take the space before them (as in Llama 3's regex), so "of 3" and "3 + 4" share
# the token "3": copying a number from the question into the answer is then a plain copy.
#   's 't 're ... | letters with optional leading space | one digit | punctuation run | spaces
PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Unicode White_Space, which is what \s means in tiktoken's (Rust) regex. Python's \s differs
# (it also matches \x1c-\x1f), so the translation below spells it out.
_WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
                (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
                (0x3000, 0x3000)]


# ----------------------------------------------------------------------------------------------
# Pre-tokenisation for training. Python's `re` has no \p{L}, and tiktoken does not expose its regex,
# so we translate the tiktoken pattern mechanically: \p{X} / \P{X} (X a Unicode general category
# such as L, N, Lu) and \s / \S become explicit character classes built from `unicodedata`.
# Everything else in PAT means the same in both engines. The split is then identical to tiktoken's
# (tested), except for code points assigned after Python's Unicode version (14.0 for Python 3.11).

@functools.lru_cache(maxsize=None)
def _category_runs():
    """[(category, lo, hi)]: maximal runs of code points with the same general category (one pass)."""
    runs = []
    for cp in range(0x110000):
        cat = unicodedata.category(chr(cp))
        if runs and runs[-1][0] == cat:
            runs[-1][2] = cp
        else:
            runs.append([cat, cp, cp])
    return runs


def _category_ranges(cat):
    """Code-point ranges [(lo, hi)] whose general category starts with `cat` ("L" -> Lu, Ll, ...)."""
    ranges = []
    for c, lo, hi in _category_runs():
        if c.startswith(cat):
            if ranges and ranges[-1][1] == lo - 1:
                ranges[-1] = (ranges[-1][0], hi)
            else:
                ranges.append((lo, hi))
    if not ranges:
        raise ValueError(f"unknown Unicode category \\p{{{cat}}}")
    return ranges


def _class_body(ranges):
    return "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)


@functools.lru_cache(maxsize=None)
def python_pattern(pat_str=PAT):
    """Translate a tiktoken regex into an equivalent pattern for Python's `re` (used for training)."""
    out, i, in_class = [], 0, False
    while i < len(pat_str):
        c = pat_str[i]
        if c == "\\" and i + 1 < len(pat_str):
            e = pat_str[i + 1]
            if e in "pP":
                m = re.match(r"\{(\w+)\}|(\w)", pat_str[i + 2:])
                if not m:
                    raise ValueError(f"cannot translate {pat_str[i:i + 6]!r} in {pat_str!r}")
                body = _class_body(_category_ranges(m.group(1) or m.group(2)))
                negate, i = e == "P", i + 2 + m.end()
            elif e in "sS":
                body, negate, i = _class_body(_WHITE_SPACE), e == "S", i + 2
            else:
                out.append(pat_str[i:i + 2])
                i += 2
                continue
            if in_class and negate:
                raise ValueError(f"cannot translate a negated class inside [...] in {pat_str!r}")
            out.append(body if in_class else ("[^" if negate else "[") + body + "]")
            continue
        if c == "[" and not in_class:
            in_class = True
            out.append(c)
            if pat_str[i + 1:i + 2] == "^":  # "[^" and a literal "]" right after it stay in the class
                out.append("^")
                i += 1
            if pat_str[i + 1:i + 2] == "]":
                out.append("\\]")
                i += 1
        elif c == "]" and in_class:
            in_class = False
            out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def split_text(text, pat_str=PAT):
    """Pre-tokenise: the chunks tiktoken's regex would produce, via Python's `re`."""
    return re.findall(python_pattern(pat_str), text)


# ----------------------------------------------------------------------------------------------
# BPE training. Read train_bpe_simple first: it is the algorithm. train_bpe learns the same ranks
# (tests/test_tokenizer.py checks that they agree), fast enough for megabytes of text.

def train_bpe_simple(text, vocab_size, pat_str=PAT):
    """The teaching version: recount every pair from scratch at each step (slow, obviously correct)."""
    chunks = split_text(text, pat_str)                    # tiktoken's regex split: merges never cross chunks
    words = collections.Counter(tuple(chunk.encode("utf-8", errors="replace")) for chunk in chunks)
    vocab = [bytes([i]) for i in range(256)]              # token id (= rank) -> bytes
    while len(vocab) < vocab_size:
        counts = collections.Counter()                    # count(a, b) over all chunks, weighted by frequency
        for w, f in words.items():
            for pair in zip(w, w[1:]):
                counts[pair] += f
        if not counts:
            break
        # the most frequent pair; ties broken by the smallest (bytes(a), bytes(b))
        a, b = min(counts, key=lambda p: (-counts[p], vocab[p[0]], vocab[p[1]]))
        if vocab[a] + vocab[b] in vocab:                      # the same bytes can arise from two pairs
            new = vocab.index(vocab[a] + vocab[b])
        else:
            new = len(vocab)
            vocab.append(vocab[a] + vocab[b])
        merged = collections.Counter()
        for w, f in words.items():                            # replace a, b by the new token, left to right
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += f
        words = merged
    return {tok: rank for rank, tok in enumerate(vocab)}


def train_bpe(text, vocab_size, pat_str=PAT, verbose=False):
    """Learn byte-level BPE ranks: {token bytes: rank}, 256 single bytes then merges in order.

    Each step merges the pair (a, b) with the highest count
        count(a, b) = sum over chunks w of  freq(w) * #occurrences of a,b adjacent in w,
    ties broken by the lexicographically smallest (bytes(a), bytes(b)). Stops early, with fewer
    than `vocab_size` ranks, if no pair is left. Specials are not included (Tokenizer adds them).

    Fast because it works on unique chunks and updates counts incrementally: after merging (a, b),
    only the chunks that contain (a, b) are re-counted (index: pair -> chunk ids), and a heap with
    lazy deletion finds the best pair.
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be >= 256 (the single bytes), got {vocab_size}")
    t0 = time.time()
    chunk_freq = collections.Counter(split_text(text, pat_str))
    # words[i]: chunk i as a list of token ids (initially its UTF-8 bytes); freqs[i]: its count
    words = [list(chunk.encode("utf-8", errors="replace")) for chunk in chunk_freq]
    freqs = list(chunk_freq.values())
    vocab = [bytes([i]) for i in range(256)]          # token id (= rank) -> bytes
    id_of = {b: i for i, b in enumerate(vocab)}       # bytes -> token id

    pair_count = collections.defaultdict(int)         # (a, b) -> weighted count
    where = collections.defaultdict(set)              # (a, b) -> ids of chunks that contain it
    for wi, (w, f) in enumerate(zip(words, freqs)):
        for pair in zip(w, w[1:]):
            pair_count[pair] += f
            where[pair].add(wi)

    def entry(pair):  # heap order: highest count, then smallest (bytes(a), bytes(b))
        return (-pair_count[pair], vocab[pair[0]], vocab[pair[1]], pair)

    heap = [entry(p) for p in pair_count]
    heapq.heapify(heap)
    if verbose:
        print(f"bpe: {len(text):,} chars -> {len(words):,} unique chunks in {time.time() - t0:.1f}s")

    while len(vocab) < vocab_size and heap:
        neg_count, _, _, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg_count or neg_count == 0:
            continue                                   # stale heap entry
        a, b = pair
        merged = vocab[a] + vocab[b]
        new = id_of.get(merged)
        if new is None:                                # the same bytes can arise from two pairs
            new = id_of[merged] = len(vocab)
            vocab.append(merged)

        delta = collections.defaultdict(int)
        for wi in where.pop(pair):
            w, f = words[wi], freqs[wi]
            out, i = [], 0
            while i < len(w):                          # merge left to right, non-overlapping
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            if len(out) == len(w):
                continue                               # stale index entry: pair no longer here
            for p in zip(w, w[1:]):
                delta[p] -= f
            for p in zip(out, out[1:]):
                delta[p] += f
                where[p].add(wi)
            words[wi] = out
        for p, d in delta.items():
            if d == 0:
                continue
            pair_count[p] += d
            if pair_count[p] <= 0:
                del pair_count[p]
                where.pop(p, None)
            else:
                heapq.heappush(heap, entry(p))
        pair_count.pop(pair, None)
        if verbose and (len(vocab) % 256 == 0 or len(vocab) == vocab_size):
            print(f"bpe: {len(vocab):5d} tokens, last merge {_merge_str(vocab[a], vocab[b])}"
                  f" (count {-neg_count:,}), {time.time() - t0:.1f}s")
    if verbose:
        print(f"bpe: done, {len(vocab)} tokens in {time.time() - t0:.1f}s")
    return {tok: rank for rank, tok in enumerate(vocab)}


def _show(b):
    return repr(b.decode("utf-8", errors="replace"))


def _merge_str(left, right):
    return f"{_show(left)} + {_show(right)} -> {_show(left + right)}"


def _split_at_rank(ranks, token, max_rank):
    """The two parts tiktoken's rank-BPE builds `token` from, using only ranks < max_rank."""
    parts = [bytes([x]) for x in token]
    while len(parts) > 2:
        best = min(((ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)
                    if ranks.get(parts[i] + parts[i + 1], max_rank) < max_rank), default=None)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def merges_readable(ranks, n=20):
    """The first n merges as strings, e.g. "'t' + 'h' -> 'th'". `ranks`: dict or Tokenizer."""
    ranks = getattr(ranks, "mergeable_ranks", ranks)
    lines = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if rank < 256:
            continue
        if len(lines) >= n:
            break
        parts = _split_at_rank(ranks, token, rank)
        lines.append(_merge_str(parts[0], b"".join(parts[1:])))
    return lines


# ----------------------------------------------------------------------------------------------
# Serving.

class Tokenizer:
    """A tiktoken Encoding plus EOS and PAD ids. Ids: merges ranks, then eos_id, then pad_id."""

    def __init__(self, mergeable_ranks, name="minigpt", pat_str=PAT):
        n = len(mergeable_ranks)
        if sorted(mergeable_ranks.values()) != list(range(n)):
            raise ValueError("mergeable_ranks must be numbered 0..n-1")
        self.mergeable_ranks = dict(mergeable_ranks)
        self.name, self.pat_str, self._gpt2 = name, pat_str, False
        self.eos_id, self.pad_id, self.vocab_size = n, n + 1, n + 2
        self.enc = tiktoken.Encoding(name=name, pat_str=pat_str, mergeable_ranks=self.mergeable_ranks,
                                     special_tokens={EOS: self.eos_id, PAD: self.pad_id})

    @classmethod
    def train(cls, text, vocab_size, verbose=False):
        """Train BPE on `text`; vocab_size counts the 2 specials."""
        if vocab_size < 258:
            raise ValueError(f"vocab_size must be >= 258 (256 bytes + EOS + PAD), got {vocab_size}")
        return cls(train_bpe(text, vocab_size - 2, verbose=verbose))

    @classmethod
    def gpt2(cls):
        """OpenAI's GPT-2 encoding (eos 50256) plus a pad id 50257 that only we use."""
        try:
            enc = tiktoken.get_encoding("gpt2")
        except Exception as e:
            raise UserError("the GPT-2 encoding could not be loaded (tiktoken downloads it on first "
                            f"use and this machine is offline): {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None
        tok = cls.__new__(cls)
        tok.mergeable_ranks = None
        tok.name, tok.pat_str, tok._gpt2, tok.enc = "gpt2", None, True, enc
        tok.eos_id, tok.pad_id = enc.eot_token, enc.n_vocab
        tok.vocab_size = enc.n_vocab + 1
        return tok

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        ids = [int(i) for i in ids if int(i) != self.pad_id]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {self.vocab_size})")
        return self.enc.decode(ids, errors="replace")

    def decode_streamed(self, ids, final=False):
        """The text of an answer as it may be shown while its tokens are still coming (chat.py, serve.py).

        decode(ids) without leading whitespace; until `final`, trailing whitespace and replacement characters
        (half of a multi-byte character) are held back, so the text shown after each token is a prefix of the
        final answer decode(ids).strip(), and the pieces shown one after another join to exactly that.
        """
        text = self.decode(ids).lstrip()
        if final:
            return text.rstrip()
        end = len(text)
        while end and (text[end - 1].isspace() or text[end - 1] == "\ufffd"):
            end -= 1
        return text[:end]

    def __repr__(self):
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size})"

    def save(self, path):
        """One small JSON file, written atomically (tmp file + os.replace)."""
        if self._gpt2:
            obj = {"name": "gpt2"}
        else:
            ranked = sorted(self.mergeable_ranks, key=self.mergeable_ranks.get)
            obj = {"name": self.name, "pat_str": self.pat_str,
                   "ranks": [base64.b64encode(t).decode("ascii") for t in ranked],
                   "special_tokens": {EOS: self.eos_id, PAD: self.pad_id}}
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"{path}: tokenizer file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a valid tokenizer file ({e})") from None
        if isinstance(obj, dict) and obj.get("name") == "gpt2" and "ranks" not in obj:
            return cls.gpt2()
        try:
            ranks = {base64.b64decode(t, validate=True): r for r, t in enumerate(obj["ranks"])}
            if len(ranks) != len(obj["ranks"]):
                raise ValueError("duplicate tokens")
            n = len(ranks)
            if obj["special_tokens"] != {EOS: n, PAD: n + 1}:
                raise ValueError(f"special_tokens must be {{{EOS!r}: {n}, {PAD!r}: {n + 1}}}")
            return cls(ranks, name=str(obj["name"]), pat_str=str(obj["pat_str"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{path}: not a valid tokenizer file ({type(e).__name__}: {e})") from None

import json
import unicodedata

import pytest

from minigpt.cli import UserError
from minigpt.data import (DataError, PROMPT_TEMPLATE, clean_text,
                          encode_prompt_response, lm_windows, load_comparisons, load_demonstrations,
                          load_text, render_prompt, sft_batch)
from minigpt.rankings import clean_rankings, load_rankings
from minigpt.sft_data import clean_demonstrations

SEED = [{"instruction": "翻译成法语：你好", "output": "Bonjour"},
        {"instruction": "计算2+2", "output": "4"}]


class CharTokenizer:
    """One token per character (its code point); eos and pad are ids no character uses here."""
    eos_id, pad_id = 0, 1

    def encode(self, text):
        return [ord(c) for c in text]


# ---------------------------------------------------------------------------------------------------------
# template, loss mask, batching
def test_render_prompt():
    assert render_prompt("计算2+2") == "### Instruction:\n计算2+2\n\n### Response:\n"
    assert render_prompt("Sum these.", "3 4") == \
        "### Instruction:\nSum these.\n\n### Input:\n3 4\n\n### Response:\n"
    assert PROMPT_TEMPLATE.format(instruction="x") == render_prompt("x")


def test_loss_mask_covers_exactly_response_and_eos():
    tok = CharTokenizer()
    ids, mask = encode_prompt_response(tok, "ab", "cd", block_size=64)
    assert ids == [97, 98, 99, 100, 0]
    assert mask == [0, 0, 1, 1, 1]
    prompt = render_prompt("计算2+2")
    ids, mask = encode_prompt_response(tok, prompt, "4", block_size=64)
    assert len(ids) == len(prompt) + 2 and sum(mask) == 2
    assert mask[-2:] == [1, 1] and ids[-2:] == [ord("4"), 0]
    assert encode_prompt_response(tok, "abc", "defg", block_size=5) == \
        ([97, 98, 99, 100, 101], [0, 0, 0, 1, 1])


def test_sft_batch_shifts_and_pads():
    import torch
    tok = CharTokenizer()
    a = encode_prompt_response(tok, "ab", "cd", 64)   # ids 97 98 99 100 0
    b = encode_prompt_response(tok, "a", "c", 64)     # ids 97 99 0
    x, y, mask = sft_batch([a, b], pad_id=tok.pad_id)
    assert x.tolist() == [[97, 98, 99, 100], [97, 99, 1, 1]]
    assert y.tolist() == [[98, 99, 100, 0], [99, 0, 1, 1]]
    assert mask.tolist() == [[0, 1, 1, 1], [1, 1, 0, 0]]  # targets c, d, eos / c, eos; padding masked
    assert x.dtype == y.dtype == torch.long and mask.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------
# loading every format
def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_seed_json_loads_and_cleans(tmp_path, capsys):
    path = write(tmp_path / "seed.json", json.dumps(SEED, ensure_ascii=False, indent=4))
    examples = load_demonstrations(path)
    assert examples == [{"instruction": "翻译成法语：你好", "input": "", "output": "Bonjour"},
                        {"instruction": "计算2+2", "input": "", "output": "4"}]
    kept, stats = clean_demonstrations(examples, max_chars=1000)
    assert kept == examples and stats["kept"] == 2
    assert "cleaning: 2 read, 0 empty, 0 duplicates, 0 too long, 2 kept" in capsys.readouterr().out


def test_alpaca_and_jsonl_formats(tmp_path):
    alpaca = [{"instruction": "Add the numbers.", "input": "3 4", "output": "7"}]
    assert load_demonstrations(write(tmp_path / "a.json", json.dumps(alpaca)))[0]["input"] == "3 4"
    lines = "\n".join(json.dumps(r, ensure_ascii=False) for r in SEED + alpaca) + "\n\n"
    loaded = load_demonstrations(write(tmp_path / "d.jsonl", lines))
    assert [r["output"] for r in loaded] == ["Bonjour", "4", "7"]


def test_comparisons_ranked_and_pairs(tmp_path):
    rows = [{"prompt": "计算2+2", "responses": ["4", "The answer is 4.", "5"], "labeler": "simulated-3",
             "seed": 0, "gold": [1.0, 0.6, 0.1], "mistakes": [None, "preamble", "wrong_answer"]},
            {"prompt": "翻译成法语：你好", "chosen": "Bonjour", "rejected": "hello"}]
    loaded = load_comparisons(write(tmp_path / "c.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert loaded[0]["responses"] == ["4", "The answer is 4.", "5"] and loaded[0]["mistakes"][1] == "preamble"
    assert loaded[1] == {"prompt": "翻译成法语：你好", "responses": ["Bonjour", "hello"]}


def hh(*turns):
    """An HH-RLHF transcript: hh("Hi", "Hello!") == "\\n\\nHuman: Hi\\n\\nAssistant: Hello!"."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def msg(role, content):
    return {"role": role, "content": content}


def test_comparisons_hh_rlhf(tmp_path):
    rows = [{"chosen": hh(" 计算2+2 ", " 4 "), "rejected": hh(" 计算2+2 ", "5"),  # one turn
             "source": "hh"},
            {"chosen": hh("Hi", "Hello!", "What is 2+2?", "4"),
             "rejected": hh("Hi", "Hello!", "What is 2+2?", "")},
            # formats mix line by line
            {"prompt": "翻译成法语：你好", "chosen": "Bonjour", "rejected": "hello"}]
    loaded = load_comparisons(write(tmp_path / "hh.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert loaded[0] == {"prompt": "计算2+2", "responses": ["4", "5"], "source": "hh"}
    assert loaded[1] == {"prompt": (("user", "Hi"), ("assistant", "Hello!"), ("user", "What is 2+2?")),
                         "responses": ["4", ""]}
    assert loaded[2] == {"prompt": "翻译成法语：你好", "responses": ["Bonjour", "hello"]}


def test_comparisons_conversational(tmp_path):
    rows = [{"prompt": [msg("user", "计算2+2")], "chosen": [msg("assistant", "4")],
             "rejected": [msg("assistant", "5")], "score": 1},
            {"prompt": [msg("system", "Be brief."), msg("user", "Hi"), msg("assistant", "Hello!"),
                        msg("user", "What is 2+2?")],
             "chosen": [msg("assistant", "4")],
             "rejected": [msg("assistant", "Let me think."), msg("assistant", "5")]},
            # an implicit prompt
            {"chosen": [msg("system", "Be brief."), msg("user", "计算2+2"), msg("assistant", "4")],
             "rejected": [msg("system", "Be brief."), msg("user", "计算2+2"), msg("assistant", "5")]}]
    loaded = load_comparisons(write(tmp_path / "conv.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert loaded[0] == {"prompt": "计算2+2", "responses": ["4", "5"], "score": 1}
    assert loaded[1] == {"prompt": (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"),
                                    ("user", "What is 2+2?")), "responses": ["4", "5"]}
    assert loaded[2] == {"prompt": (("system", "Be brief."), ("user", "计算2+2")), "responses": ["4", "5"]}


def test_load_text_file_and_folder(tmp_path):
    write(tmp_path / "b.txt", "second")
    write(tmp_path / "a.txt", "first")
    write(tmp_path / "skip.md", "not text")
    assert load_text(str(tmp_path / "a.txt")) == "first"
    assert load_text(str(tmp_path)) == "first\n\nsecond"


# ---------------------------------------------------------------------------------------------------------
# malformed input: one line naming the file and the line / record
def error_of(fn, path):
    with pytest.raises(DataError) as info:
        fn(path)
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message and str(path) in message
    return message


def test_bad_json_line_is_named(tmp_path):
    path = write(tmp_path / "d.jsonl",
                 json.dumps(SEED[0]) + "\n" + json.dumps(SEED[1]) + "\n{\"instruction\": \n")
    assert error_of(load_demonstrations, path).startswith(f"{path}:3: invalid JSON")
    # a comma missing
    broken = '[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}\n]'
    path = write(tmp_path / "d.json", broken)
    assert error_of(load_demonstrations, path).startswith(f"{path}:3: invalid JSON")


def test_missing_and_mistyped_fields_are_named(tmp_path):
    path = write(tmp_path / "d.json", json.dumps([SEED[0], {"instruction": "计算2+2"}]))
    assert error_of(load_demonstrations, path) == f"{path}: record 1: field 'output' missing"
    path = write(tmp_path / "d.jsonl",
                 json.dumps(SEED[0]) + "\n" + json.dumps({"instruction": "x", "output": 4}))
    assert error_of(load_demonstrations, path) == f"{path}:2: field 'output' must be a string, got int"
    path = write(tmp_path / "d2.jsonl", "[1, 2]\n")
    assert "expected a JSON object" in error_of(load_demonstrations, path)
    path = write(tmp_path / "c.jsonl", json.dumps({"prompt": "p", "responses": ["only one"]}))
    assert error_of(load_comparisons, path).startswith(f"{path}:1: field 'responses' needs at least 2")
    path = write(tmp_path / "c2.jsonl", json.dumps({"prompt": "p", "chosen": "a"}))
    assert error_of(load_comparisons, path) == f"{path}:1: field 'rejected' missing"
    path = write(tmp_path / "c3.jsonl", json.dumps({"prompt": "p", "responses": ["a", 2]}))
    assert "list of strings" in error_of(load_comparisons, path)


def test_malformed_preference_pairs_are_named(tmp_path):
    user, good = [msg("user", "Hi")], [msg("assistant", "Hello!")]
    cases = [  # (record, the message after "path:2: ")
        ({"chosen": "Human: Hi. Assistant: Hello!", "rejected": hh("Hi", "No.")},
         "field 'chosen' has no '\\n\\nAssistant:' turn"),
        ({"chosen": hh("Hi", "Hello!"), "rejected": "\n\nHuman: Hi"},
         "field 'rejected' has no '\\n\\nAssistant:' turn"),
        ({"chosen": "\n\nAssistant: Hello!", "rejected": hh("Hi", "No.")},
         "field 'chosen' must start with '\\n\\nHuman:'"),
        ({"chosen": hh("Hi", "Hello!"), "rejected": hh("Hey", "No.")},
         "fields 'chosen' and 'rejected' differ before their final assistant turn"),
        ({"chosen": hh("Hi", "  "), "rejected": hh("Hi", "No.")}, "field 'chosen' has an empty answer"),
        ({"chosen": hh("Hi", "Hello!"), "rejected": 3}, "field 'rejected' must be a string, got int"),
        ({"chosen": hh("Hi", "Hello!")}, "field 'rejected' missing"),
        ({"prompt": [], "chosen": good, "rejected": good},
         "field 'prompt' must be a non-empty list of messages"),
        ({"prompt": ["Hi"], "chosen": good, "rejected": good},
         "field 'prompt' message 0 must be an object, got str"),
        ({"prompt": [{"content": "Hi"}], "chosen": good, "rejected": good},
         "field 'prompt' message 0: 'role' must be system, user or assistant, got nothing"),
        ({"prompt": user, "chosen": good, "rejected": [msg("bot", "No.")]},
         "field 'rejected' message 0: 'role' must be system, user or assistant, got 'bot'"),
        ({"prompt": [msg("user", ["Hi"])], "chosen": good, "rejected": good},
         "field 'prompt' message 0: 'content' must be a string, got list"),
        ({"prompt": user, "chosen": [msg("user", "Hello!")], "rejected": good},
         "field 'chosen' has no assistant message"),
        ({"prompt": user, "chosen": "Hello!", "rejected": good},
         "field 'chosen' must be a non-empty list of messages"),
        ({"prompt": user, "chosen": [msg("assistant", "")], "rejected": good},
         "field 'chosen' has an empty answer"),
        ({"chosen": user + good, "rejected": [msg("user", "Hey")] + good},
         "fields 'chosen' and 'rejected' differ before their final assistant turn"),
        ({"chosen": good, "rejected": user + good},
         "field 'chosen' must be prompt messages followed by an assistant message"),
    ]
    for i, (record, problem) in enumerate(cases):
        path = write(tmp_path / f"p{i}.jsonl",
                     json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps(record))
        assert error_of(load_comparisons, path) == f"{path}:2: {problem}"


def test_non_utf8_empty_and_missing_files(tmp_path):
    path = tmp_path / "latin1.jsonl"
    latin1 = '{"instruction": "caf\xe9", "output": "x"}'.encode("latin-1")
    path.write_bytes(json.dumps(SEED[0]).encode() + b"\n" + latin1)
    message = error_of(load_demonstrations, str(path))
    assert message.startswith(f"{path}:2: not valid UTF-8") and "byte offset" in message
    assert error_of(load_demonstrations, write(tmp_path / "e.json", "  \n")).endswith("file is empty")
    assert error_of(load_text, write(tmp_path / "e.txt", "")).endswith("file is empty")
    assert error_of(load_demonstrations, write(tmp_path / "l.json", "[]")).endswith("no records")
    assert error_of(load_demonstrations, str(tmp_path / "nope.json")).endswith("no such file or directory")
    assert error_of(load_comparisons, str(tmp_path / "nope.jsonl")).endswith("no such file or directory")
    (tmp_path / "empty_dir").mkdir()
    assert error_of(load_text, str(tmp_path / "empty_dir")).endswith("folder has no .txt files")


# ---------------------------------------------------------------------------------------------------------
# cleaning
def test_cleaning_counts_and_normalises(capsys):
    decomposed = unicodedata.normalize("NFD", "café")
    examples = [
        {"instruction": "  Translate   to French:\tcoffee ", "output": decomposed},
        {"instruction": "Translate to French: coffee", "output": "café"},       # duplicate after cleaning
        {"instruction": "   ", "output": "x"},                                  # empty instruction
        {"instruction": "y", "output": ""},                                     # empty output
        {"instruction": "long", "output": "z" * 500},                           # too long
        {"instruction": "a\r\n\r\n\r\n\r\nb  ", "input": " 3  4 ", "output": "7"},
    ]
    kept, stats = clean_demonstrations(examples, max_chars=200)
    assert stats == {"read": 6, "empty": 2, "duplicates": 1, "too_long": 1, "kept": 2}
    assert capsys.readouterr().out.strip() == "cleaning: 6 read, 2 empty, 1 duplicates, 1 too long, 2 kept"
    assert kept[0] == {"instruction": "Translate to French: coffee", "input": "", "output": "café"}
    assert kept[0]["output"] == unicodedata.normalize("NFC", "café")
    assert kept[1] == {"instruction": "a\n\nb", "input": "3 4", "output": "7"}
    assert clean_text(" line one  \n   line two ") == "line one\nline two"


def test_all_filtered_is_an_error():
    with pytest.raises(DataError, match="no examples left after cleaning"):
        clean_demonstrations([{"instruction": "", "output": ""}], max_chars=100, source="seed.json")


def test_rankings_cleaned_before_the_held_out_split(tmp_path, capsys):
    """4 pairs each written 3 times: 4 kept, and no copy on both sides of the held-out split
    (it read 1.000)."""
    pairs = [{"prompt": f"Add {i} and {i}.", "chosen": str(2 * i), "rejected": str(2 * i + 1)}
             for i in range(4)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs * 3), encoding="utf-8")
    train, val = load_rankings("", data=str(path), val_fraction=0.5)
    assert capsys.readouterr().out == ("cleaning rankings: 12 read, 0 empty, 0 with all responses alike, "
                                       "8 duplicates, 0 too long, 4 kept (0 empty or repeated responses "
                                       "dropped)\n")
    assert len(train) == len(val) == 2
    assert sorted(r["prompt"] for r in train + val) == [f"Add {i} and {i}." for i in range(4)]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in val}
    # --val_data: a held-out ranking identical to a training one is dropped; the rest stay
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps(pairs[0]) + "\n" + json.dumps({**pairs[0], "rejected": "9"}) + "\n")
    train, val = load_rankings("", data=str(path), val_data=str(held))
    assert len(train) == 4 and [r["responses"] for r in val] == [["0", "9"]]
    assert capsys.readouterr().out.endswith("; held out: 2 read, 0 empty, 0 with all responses alike, "
                                            "0 duplicates, 0 too long, 2 kept (0 empty or repeated responses "
                                            "dropped), 1 also in training dropped\n")
    # too few for an every-n-th split: the error says what to do
    with pytest.raises(UserError, match=r"4 rankings are too few to hold out every 7-th "
                                        r"\(got 4 to train on, 0 held out\): give --val_data=file, "
                                        r"or a larger --val_fraction"):
        load_rankings("", data=str(path))


def test_clean_rankings_counts_and_normalises():
    decomposed = unicodedata.normalize("NFD", "café")
    records = [
        {"prompt": " Say  café ", "responses": [decomposed, "", "tea", "café"],
         "gold": [1.0, 0.0, 0.5, 0.9]},
        {"prompt": "Say café", "responses": ["café", "tea"]},              # the first, once cleaned
        {"prompt": "  ", "responses": ["a", "b"]},                          # empty prompt
        {"prompt": "p", "responses": ["a", " "]},                           # one response left
        {"prompt": "q", "responses": ["same", " same "]},                   # chosen == rejected
        {"prompt": "r", "responses": ["x" * 100, "y"]},                     # too long
    ]
    kept, stats = clean_rankings(records, max_chars=100)
    assert stats == {"read": 6, "empty": 2, "alike": 1, "duplicates": 1, "too_long": 1, "kept": 1,
                     "responses_dropped": 4}
    # the empty and the repeated response are dropped with their gold scores
    assert kept == [{"prompt": "Say café", "responses": ["café", "tea"], "gold": [1.0, 0.5]}]
    assert kept[0]["responses"][0] == unicodedata.normalize("NFC", "café")


def test_lm_windows_are_next_token_pairs_inside_the_stream():
    import torch

    tokens = torch.arange(100, 150)                    # token i has id 100 + i: a window's start is readable
    x, y = lm_windows(tokens, 8, 64, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (64, 8)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x - x[:, :1], torch.arange(8).expand(64, 8))   # contiguous windows
    assert x.min() >= 100 and y.max() <= 149                           # never past the end
    starts = set((x[:, 0] - 100).tolist())
    assert len(starts) > 20 and max(starts) <= 50 - 8 - 1

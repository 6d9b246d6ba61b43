"""Data: file formats, cleaning, the prompt template (and the chat template of conversations built on it), and
SFT rendering with its loss mask (the rankings' cleaning and held-out split: minigpt/rankings.py).

Every stage sees an instruction through the SAME template (PROMPT_TEMPLATE), so SFT, labelling, the reward
model, PPO and evaluation all condition on identical prompt text.

File formats read here (a malformed file is one DataError line naming the file and line, never a traceback):
  demonstrations  .json list  [{"instruction": ..., "output": ...}, ...]           (the seed article's format)
                  .json list  [{"instruction": ..., "input": ..., "output": ...}]  (Alpaca)
                  .jsonl      one such object per line
  comparisons     .jsonl      {"prompt": ..., "responses": [best, ..., worst], ...}  (ranked list, label.py)
                              {"prompt": ..., "chosen": ..., "rejected": ...}         (a pair)
                              {"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected": ...}
                                  (Anthropic HH-RLHF)
                              {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
                                  (conversational, as in TRL; also without "prompt", chosen/rejected then
                                  being whole conversations)
  text            a .txt file, or a folder of .txt files (UTF-8)
JSON list vs JSON lines is decided by the first non-blank character ("[" = list), not by the extension.
"""

import json
import os
import re
import unicodedata

from minigpt.cli import UserError

PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"


class DataError(UserError):
    """A malformed data file: one line, "path:line: problem" (JSONL) or "path: record N: problem"
    (JSON list)."""


def render_prompt(instruction, input=""):
    """The prompt text the model sees; an Alpaca "input" becomes an "### Input:" block after the
    instruction."""
    if input:
        instruction = f"{instruction}\n\n### Input:\n{input}"
    return PROMPT_TEMPLATE.format(instruction=instruction)


# A conversation is a list of (role, text), role system, user or assistant, rendered one piece after another:
#     "### System:\n{system}\n\n"                                  (only when there is a system message)
#     PROMPT_TEMPLATE.format(instruction=user text)                 then the assistant's answer + [eos],
#     PROMPT_TEMPLATE.format(instruction=next user text)            then its answer + [eos], ...
# A single turn is exactly SFT's prompt + response + [eos], so a model trained on single turns stops at each
# end-of-text just the same. Consecutive messages of one role are joined by "\n"; every system message goes
# into the one block at the top. Each piece is encoded on its own (each ends in a newline or eos, so no BPE
# merge could cross), and end-of-text is a token id: special-token strings in the text stay ordinary text.
SYSTEM_TEMPLATE = "### System:\n{system}\n\n"


def _conversation_pieces(tokenizer, messages):
    """-> (system ids, [(ids, mask) per run of one role]): mask 1 on an assistant's tokens and its eos."""
    runs = []                                                   # [[role, [text, ...]], ...]
    for role, text in messages:
        if role not in ("user", "assistant"):
            if role != "system":
                raise ValueError(f"unknown role {role!r}: system, user or assistant")
            continue
        if runs and runs[-1][0] == role:
            runs[-1][1].append(text)
        else:
            runs.append([role, [text]])
    system = "\n".join(text for role, text in messages if role == "system")
    system_ids = tokenizer.encode(SYSTEM_TEMPLATE.format(system=system)) if system else []
    pieces = []
    for role, texts in runs:
        if role == "user":
            ids = tokenizer.encode(PROMPT_TEMPLATE.format(instruction="\n".join(texts)))
            pieces.append((ids, [0] * len(ids)))
        else:
            ids = tokenizer.encode("\n".join(texts)) + [tokenizer.eos_id]
            pieces.append((ids, [1] * len(ids)))
    return system_ids, pieces


def encode_conversation(tokenizer, messages):
    """[(role, text), ...] -> (ids, mask), mask 1 on every assistant turn's tokens and its eos (what SFT on
    every assistant turn trains), 0 elsewhere. Ending with a user message it is a prompt: its ids end with
    "### Response:\n" and its mask is all 0. No truncation (fit_conversation makes a prompt fit)."""
    system_ids, pieces = _conversation_pieces(tokenizer, messages)
    ids, mask = list(system_ids), [0] * len(system_ids)
    for piece_ids, piece_mask in pieces:
        ids += piece_ids
        mask += piece_mask
    return ids, mask


def fit_conversation(tokenizer, messages, room):
    """A conversation ending with a user message -> (prompt ids of at most `room` tokens, turns dropped).

    The OLDEST turns (a user message and the answer after it) are dropped until the rest fits; the system
    message and the last user message never are. When those two alone do not fit: ValueError."""
    system_ids, pieces = _conversation_pieces(tokenizer, messages)
    # a turn starts at each user run (and at the start, should the history open with an assistant)
    starts = [k for k, (_, mask) in enumerate(pieces) if k == 0 or not mask[0]] or [0]
    for dropped, start in enumerate(starts):
        ids = system_ids + [t for piece_ids, _ in pieces[start:] for t in piece_ids]
        if len(ids) <= room:
            return ids, dropped
    earlier = " even with every earlier turn dropped" if len(starts) > 1 else ""
    raise ValueError(f"the prompt is {len(ids)} tokens{earlier}; {max(room, 0)} fit")


def render_conversation(messages):
    """The template's text of a conversation, end-of-text (an id, not text) shown as a newline: what the
    tokenizer is trained on, so that its merges know the template."""
    system = "\n".join(text for role, text in messages if role == "system")
    return ((SYSTEM_TEMPLATE.format(system=system) if system else "")
            + "".join(PROMPT_TEMPLATE.format(instruction=text) if role == "user" else text + "\n"
                      for role, text in messages if role != "system"))


# A prompt, wherever one is kept: an instruction (a str: one user message), or a conversation that ends with
# the user message to answer, a tuple of (role, text) pairs (in a JSON file, a list of {"role", "content"}).
def as_conversation(prompt):
    """A prompt -> [(role, text), ...]."""
    return [("user", prompt)] if isinstance(prompt, str) else [(role, text) for role, text in prompt]


def prompt_to_json(prompt):
    """A prompt as a JSON file keeps it: the instruction, or the list of {"role", "content"} messages."""
    return prompt if isinstance(prompt, str) else [{"role": role, "content": text} for role, text in prompt]


def prompt_text(prompt):
    """A prompt shown on one line or measured in characters: the instruction, or "role: text" lines."""
    return prompt if isinstance(prompt, str) else "\n".join(f"{role}: {text}" for role, text in prompt)


# ids = enc(prompt) + enc(response) + [eos];  loss_mask = [0]*len(enc(prompt)) + [1]*(len(enc(response)) + 1)
def encode_prompt_response(tokenizer, prompt_text, response_text, block_size):
    """-> (ids, loss_mask), both truncated to block_size. The loss is taken on the response and its eos only.

    Prompt and response are encoded separately (the template ends in a newline, so no BPE merge would cross
    the boundary anyway); that makes the boundary, and hence the mask, exact.
    """
    prompt_ids = tokenizer.encode(prompt_text)
    response_ids = tokenizer.encode(response_text) + [tokenizer.eos_id]
    ids = prompt_ids + response_ids
    mask = [0] * len(prompt_ids) + [1] * len(response_ids)
    return ids[:block_size], mask[:block_size]


def encode_for_reward(tokenizer, instruction, response_text, block_size):
    """The reward model's input: render_prompt(instruction) + response + eos -> (ids, response mask: 1 on
    the response and eos).

    The reward is a function of the response's TEXT, as a labeller reads it: train_rm.py, PPO and evaluate.py
    all encode the text afresh here, never score the ids a policy happened to sample. The two differ on ~5% of
    samples (" jeudi" sampled as one token or as two; invalid UTF-8 decoded to "\ufffd"), and a reward model
    asked about ids it never saw in training gave them +0.35 more on average: a hole PPO could learn to use.
    Too long: the prompt's start is cut, never the end-of-text the reward is read at.
    `instruction` may also be a conversation [(role, text), ...] ending with the user message the response
    answers: the reward model is then told the whole conversation (the mask is 1 on this answer only)."""
    conversation = [("user", instruction)] if isinstance(instruction, str) else instruction
    prompt_ids, _ = encode_conversation(tokenizer, conversation)   # one user message: render_prompt's ids
    response_ids = tokenizer.encode(response_text) + [tokenizer.eos_id]
    ids, mask = prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids)
    return ids[-block_size:], mask[-block_size:]


def encode_rankings(tokenizer, records, block_size):
    """Each ranking {"prompt", "responses" best..worst} -> its list of (ids, response mask) pairs,
    best..worst, each encoded as the reward model reads it (encode_for_reward). train_rm.py keeps the ids,
    train_dpo.py both."""
    return [[encode_for_reward(tokenizer, r["prompt"], y, block_size) for y in r["responses"]]
            for r in records]


def lm_windows(tokens, block_size, n, generator):
    """n random windows of a token stream (1-D long tensor) -> (x, y) (n, block_size), y the next tokens:
    pretraining text mixed into SFT and PPO-ptx."""
    import torch

    starts = torch.randint(len(tokens) - block_size - 1, (n,), generator=generator)
    return (torch.stack([tokens[s: s + block_size] for s in starts]),
            torch.stack([tokens[s + 1: s + 1 + block_size] for s in starts]))


def sft_batch(examples_ids_masks, pad_id):
    """[(ids, mask), ...] -> x (B,T), y (B,T), mask (B,T) float: next-token targets, right-padded.

    x = ids[:-1], y = ids[1:]; mask is shifted with y (mask[t] = 1 when y[t] is a response token or eos).
    Padding (pad_id in x and y) has mask 0, so it never contributes to the loss.
    """
    import torch  # imported here so the loaders above stay light (label.py and tests need no torch)

    T = max(len(ids) for ids, _ in examples_ids_masks) - 1
    B = len(examples_ids_masks)
    x = torch.full((B, T), pad_id, dtype=torch.long)
    y = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.float32)
    for b, (ids, m) in enumerate(examples_ids_masks):
        n = len(ids) - 1
        x[b, :n] = torch.tensor(ids[:-1], dtype=torch.long)
        y[b, :n] = torch.tensor(ids[1:], dtype=torch.long)
        mask[b, :n] = torch.tensor(m[1:], dtype=torch.float32)
    return x, y, mask


# ---------------------------------------------------------------------------------------------------------
# Reading files
def _read_utf8(path):
    """Whole file as text; missing path, non-UTF-8 bytes and empty files are DataErrors."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, expected a file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        bad = raw[e.start:e.start + 1]
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte offset {e.start}: {bad!r})") from None
    text = text.lstrip("\ufeff")  # a byte-order mark is harmless
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return text


def _read_records(path):
    """-> list of (where, dict): where is "path:line" (JSON lines) or "path: record i" (JSON list)."""
    text = _read_utf8(path)
    if text.lstrip()[0] == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects")
        records = [(f"{path}: record {i}", r) for i, r in enumerate(data)]
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    for where, r in records:
        if not isinstance(r, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(r).__name__}")
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _field(where, record, name, required=True, default=""):
    if name not in record:
        if required:
            raise DataError(f"{where}: field '{name}' missing")
        return default
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    return value


def load_demonstrations(path):
    """-> [{"instruction", "input", "output"}] from a seed JSON list, Alpaca JSON, or JSON lines of either."""
    return [{"instruction": _field(where, r, "instruction"),
             "input": _field(where, r, "input", required=False),
             "output": _field(where, r, "output")} for where, r in _read_records(path)]


# The roles a message may have, and HH-RLHF's names for them ("Human:"/"Assistant:" are user/assistant).
ROLE_NAMES = {"system": "System", "user": "Human", "assistant": "Assistant"}


def _messages(where, record, name):
    """record[name], a list of {"role", "content"} objects -> [(role, content stripped), ...]."""
    if name not in record:
        raise DataError(f"{where}: field '{name}' missing")
    if not isinstance(record[name], list) or not record[name]:
        raise DataError(f"{where}: field '{name}' must be a non-empty list of messages")
    out = []
    for i, m in enumerate(record[name]):
        at = f"{where}: field '{name}' message {i}"
        if not isinstance(m, dict):
            raise DataError(f"{at} must be an object, got {type(m).__name__}")
        if m.get("role") not in ROLE_NAMES:
            got = repr(m["role"]) if "role" in m else "nothing"
            raise DataError(f"{at}: 'role' must be system, user or assistant, got {got}")
        if not isinstance(m.get("content"), str):
            got = type(m["content"]).__name__ if "content" in m else "nothing"
            raise DataError(f"{at}: 'content' must be a string, got {got}")
        out.append((m["role"], m["content"].strip()))
    return out


def _hh_transcript(where, record, name):
    """An HH-RLHF transcript -> (history [(role, text), ...], final answer), split at its LAST
    "\\n\\nAssistant:"."""
    history, sep, answer = _field(where, record, name).rpartition("\n\nAssistant:")
    if not sep:
        raise DataError(f"{where}: field '{name}' has no '\\n\\nAssistant:' turn")
    if not history.startswith("\n\nHuman:"):
        raise DataError(f"{where}: field '{name}' must start with '\\n\\nHuman:'")
    parts = re.split(r"\n\n(Human|Assistant):", history)[1:]  # [speaker, text, speaker, text, ...]
    roles = {"Human": "user", "Assistant": "assistant"}
    return [(roles[who], text.strip()) for who, text in zip(parts[::2], parts[1::2])], answer.strip()


def _split_answer(where, record, name):
    """chosen or rejected without a "prompt" key -> (history, final answer): HH-RLHF text or a message
    list."""
    if not isinstance(record.get(name), list):
        return _hh_transcript(where, record, name)
    messages = _messages(where, record, name)
    if len(messages) < 2 or messages[-1][0] != "assistant":
        raise DataError(f"{where}: field '{name}' must be prompt messages followed by an assistant message")
    return messages[:-1], messages[-1][1]


def _last_assistant(where, record, name):
    """The content of the last assistant message in record[name], a list of messages."""
    answers = [text for role, text in _messages(where, record, name) if role == "assistant"]
    if not answers:
        raise DataError(f"{where}: field '{name}' has no assistant message")
    return answers[-1]


def _as_prompt(where, name, messages):
    """The messages before the answer -> a prompt: a lone user message is the instruction, a longer history
    the conversation, which must end with a user message."""
    if len(messages) == 1 and messages[0][0] == "user":
        return messages[0][1]
    if messages[-1][0] != "user":
        raise DataError(f"{where}: field '{name}' must end with a user message before the answer")
    return tuple(messages)


def _prompt(where, record):
    """record["prompt"]: an instruction, or a list of {"role", "content"} messages -> a prompt."""
    if isinstance(record.get("prompt"), list):
        return _as_prompt(where, "prompt", _messages(where, record, "prompt"))
    return _field(where, record, "prompt")


def _preference_pair(where, record):
    """An HH-RLHF or conversational pair -> (prompt, [chosen answer, rejected answer])."""
    # {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
    #  "rejected": [{"role": "assistant", "content": "Go away."}]}
    if "prompt" in record:
        prompt = _prompt(where, record)
        answers = [_last_assistant(where, record, name) for name in ("chosen", "rejected")]
    else:
        # HH-RLHF {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
        #          "rejected": "\n\nHuman: Hi\n\nAssistant: No."}
        # or whole conversations
        # {"chosen": [{"role": "user", ...}, {"role": "assistant", ...}], "rejected": [...]}
        (history, chosen), (other, rejected) = (_split_answer(where, record, n)
                                                for n in ("chosen", "rejected"))
        if history != other:
            raise DataError(f"{where}: fields 'chosen' and 'rejected' differ "
                            "before their final assistant turn")
        prompt, answers = _as_prompt(where, "chosen", history), [chosen, rejected]
    if not answers[0]:
        raise DataError(f"{where}: field 'chosen' has an empty answer")
    return prompt, answers


def load_comparisons(path):
    """-> [{"prompt", "responses": [best, ..., worst], ...}]; "prompt" is the instruction (see render_prompt),
    or a conversation ((role, text), ...) ending with the user message the responses answer.

    A pair becomes responses [chosen, rejected]. Other keys (labeler, seed, gold, mistakes) pass through
    unchanged. HH-RLHF and conversational pairs: the answers are the final assistant turns (stripped; an empty
    chosen answer is an error, an empty rejected one is kept). Without a "prompt" key, chosen and rejected
    must agree on everything before that turn (each turn compared stripped), and that history is the prompt.
    A lone user message is the instruction; anything longer (a system message, earlier turns) stays a
    conversation, which every stage renders through the chat template (encode_conversation):
    (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "What is 2+2?")).
    Each line of a file may use any of the formats."""
    out = []
    for where, r in _read_records(path):
        if "responses" in r:  # {"prompt": "Add 2 and 2.", "responses": ["4", "The answer is 4.", "5"]}
            prompt = _prompt(where, r)
            responses = r["responses"]
            if not isinstance(responses, list) or not all(isinstance(x, str) for x in responses):
                raise DataError(f"{where}: field 'responses' must be a list of strings")
            if len(responses) < 2:
                raise DataError(f"{where}: field 'responses' needs at least 2 responses, "
                                f"got {len(responses)}")
            extra = {k: v for k, v in r.items() if k not in ("prompt", "responses")}
        elif "chosen" in r or "rejected" in r:
            if "prompt" not in r or isinstance(r["prompt"], list):  # HH-RLHF or conversational
                prompt, responses = _preference_pair(where, r)
            else:  # {"prompt": "Add 2 and 2.", "chosen": "4", "rejected": "5"}
                prompt = _field(where, r, "prompt")
                responses = [_field(where, r, "chosen"), _field(where, r, "rejected")]
            extra = {k: v for k, v in r.items() if k not in ("prompt", "chosen", "rejected")}
        else:
            _field(where, r, "prompt")
            raise DataError(f"{where}: field 'responses' missing (or give 'chosen' and 'rejected')")
        out.append({"prompt": prompt, "responses": list(responses), **extra})
    return out


def load_text(path):
    """A .txt file, or every .txt file under a folder (sorted, joined by a blank line) -> str."""
    if os.path.isdir(path):
        files = sorted(os.path.join(root, f) for root, _, names in os.walk(path)
                       for f in names if f.endswith(".txt"))
        if not files:
            raise DataError(f"{path}: folder has no .txt files")
        return "\n\n".join(_read_utf8(f) for f in files)
    return _read_utf8(path)


# ---------------------------------------------------------------------------------------------------------
# Cleaning ("数据清洗" in the seed article: remove noise, keep data consistent)
def clean_text(s):
    """Unicode NFC; \\r\\n -> \\n; runs of spaces/tabs -> one space; no spaces at line ends; at most one
    blank line in a row; stripped."""
    s = unicodedata.normalize("NFC", s).replace("\r\n", "\n").replace("\r", "\n")
    s = re.sub(r"[^\S\n]+", " ", s)
    s = re.sub(r" *\n *", "\n", s)
    s = re.sub(r"\n{3,}", "\n\n", s)
    return s.strip()


def epoch_batches(lengths, batch_size, seed, window=16):
    """One epoch's batches of indices, drawn from a permutation seeded by `seed` (so a resumed run sees the
    same batches). Items of similar length are batched together, within windows of `window` batches, so
    right-padding wastes little compute; then the batches are shuffled."""
    import torch

    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    batches = []
    for start in range(0, len(perm), batch_size * window):
        chunk = sorted(perm[start: start + batch_size * window], key=lambda i: lengths[i])
        batches += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

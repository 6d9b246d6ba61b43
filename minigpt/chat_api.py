"""OpenAI's chat-completions API, the wire format only: a request body checked field by field into a
Request (every bad field one ApiError naming it, in OpenAI's error shape), and the answer as a
chat.completion object or as streamed chat.completion.chunk objects. serve.py is the HTTP server around
it; minigpt/serving.py answers the Requests in batches."""

import json
import math

from minigpt.data import fit_conversation
from minigpt.serving import ApiError, Request

MAX_TOP_LOGPROBS = 20
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}  # ours


def reject_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _int(body, key, default, low, high, what):
    value = body.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{key}' must be an integer, got {json.dumps(value)[:40]}", key)
    if not low <= value <= high:
        raise ApiError(400, f"'{key}' must be {what}, got {value}", key)
    return value


def _number(body, key, default):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, f"'{key}' must be a number, got {json.dumps(value)[:40]}", key)
    return float(value)


def _text(content, k):
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(p, str) for p in parts) and parts:
            return "".join(parts)
    raise ApiError(400, f"messages[{k}].content must be a string (or a list of text parts)",
                   f"messages[{k}].content")


def parse_request(body, served, cfg):
    """Validate a chat completion request -> (Served, Request, stream, include_usage). Raises ApiError."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, f"'model' is required: one of {', '.join(served)}", "model")
    if name not in served:
        raise ApiError(404, f"unknown model {name!r}; this server has: {', '.join(served)}", "model",
                       "model_not_found")
    s = served[name]
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    conversation = []                # [(role, text), ...]: minigpt.data's chat template renders it
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{k}] must be an object with a 'role' and a 'content'",
                           f"messages[{k}]")
        if m["role"] not in ROLES:
            raise ApiError(400, f"messages[{k}].role must be system, developer, user or assistant, got "
                                f"{json.dumps(m['role'])[:40]}", f"messages[{k}].role")
        conversation.append((ROLES[m["role"]], _text(m.get("content"), k)))
    if conversation[-1][0] != "user":
        raise ApiError(400, "the last message must be the user message to answer, got "
                            f"{json.dumps(messages[-1]['role'])}", "messages")
    for key in ("stop", "tools", "functions"):
        if body.get(key):
            raise ApiError(400, f"'{key}' is not supported by this server", key)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", "stream")
    logprobs = body.get("logprobs", False)
    if logprobs is None:
        logprobs = False
    if not isinstance(logprobs, bool):
        raise ApiError(400, "'logprobs' must be true or false", "logprobs")
    top = _int(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS, f"between 0 and {MAX_TOP_LOGPROBS}")
    if top and not logprobs:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    temperature = _number(body, "temperature", 1.0)
    if temperature < 0:
        raise ApiError(400, f"'temperature' must be >= 0 (0 = greedy), got {temperature}", "temperature")
    top_p = _number(body, "top_p", 1.0)
    if not 0 < top_p <= 1:
        raise ApiError(400, f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    n = _int(body, "n", 1, 1, cfg.max_n, f"between 1 and {cfg.max_n}")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
        raise ApiError(400, "'seed' must be a non-negative integer", "seed")

    # The prompt: the whole conversation, its oldest turns dropped until it leaves room for the answer.
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    given = body.get(key)
    max_tokens = None if given is None else _int(body, key, None, 1, 10 ** 12, "at least 1")
    try:
        prompt, dropped = fit_conversation(s.tokenizer, conversation, s.block_size - 1)
    except ValueError as e:
        raise ApiError(400, f"{e}: model {name!r} has a context of {s.block_size} tokens, which must hold "
                            "the prompt and at least one answer token", "messages", "context_length_exceeded")
    if max_tokens is None:
        max_tokens = min(cfg.default_max_tokens, s.block_size - len(prompt))
    else:
        try:
            prompt, dropped = fit_conversation(s.tokenizer, conversation, s.block_size - max_tokens)
        except ValueError as e:
            raise ApiError(400, f"{e}, and {key} is {max_tokens}: together they exceed model {name!r}'s "
                                f"context of {s.block_size} tokens", key, "context_length_exceeded")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    req = Request(prompt=prompt, conversation=conversation, dropped_turns=dropped, n=n, max_tokens=max_tokens,
                  temperature=temperature, top_p=top_p, seed=seed, logprobs=logprobs, top_logprobs=top)
    return s, req, stream, include_usage


def completion(s, req, rid, created):
    choices = []
    for i, c in enumerate(req.choices):
        choice = {"index": i, "message": {"role": "assistant", "content": c["text"]},
                  "logprobs": {"content": c["logprobs"]} if req.logprobs else None,
                  "finish_reason": c["finish_reason"]}
        if ours(req, c):
            choice["minigpt"] = ours(req, c)
        choices.append(choice)
    return {"id": rid, "object": "chat.completion", "created": created, "model": s.name,
            "system_fingerprint": None, "choices": choices, "usage": usage(req)}


def ours(req, c):
    """Our own field of a choice, not OpenAI's: the reward model's score, and how many of the oldest turns
    were dropped to fit the context (only when some were)."""
    return {**({"reward": c["reward"]} if "reward" in c else {}),
            **({"dropped_turns": req.dropped_turns} if req.dropped_turns else {})}


def usage(req):
    done = sum(len(c["tokens"]) for c in req.choices)
    return {"prompt_tokens": len(req.prompt), "completion_tokens": done,
            "total_tokens": len(req.prompt) + done}


def chunks(s, req, rid, created, include_usage):
    """The chat.completion.chunk objects of a streamed answer, made from the worker's news as it arrives:
    a role chunk per choice, one chunk per token (its text delta may be empty while a character or
    trailing space is held back), the finish chunk with our reward, and usage last. Raises ApiError on a
    worker error."""
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": s.name,
            "system_fingerprint": None}

    def chunk(i, delta, logprobs=None, finish_reason=None, **extra):
        return {**base, "choices": [{"index": i, "delta": delta, "logprobs": logprobs,
                                     "finish_reason": finish_reason, **extra}]}

    for i in range(req.n):
        yield chunk(i, {"role": "assistant", "content": ""})
    tokens, shown = [[] for _ in range(req.n)], [""] * req.n
    while True:
        news = req.events.get()
        if news[0] == "error":
            raise news[1]
        if news[0] == "done":
            break
        i = news[1]
        if news[0] == "token":
            tokens[i].append(news[2])
            text = s.tokenizer.decode_streamed(tokens[i])
            yield chunk(i, {"content": text[len(shown[i]):]}, {"content": [news[3]]} if news[3] else None)
            shown[i] = text
        else:  # finish: what was held back (nothing but dropped trailing spaces, as a rule), then the reason
            c = req.choices[i]
            if len(c["text"]) > len(shown[i]):
                yield chunk(i, {"content": c["text"][len(shown[i]):]})
            extra = {"minigpt": ours(req, c)} if ours(req, c) else {}
            yield chunk(i, {}, finish_reason=c["finish_reason"], **extra)
    if include_usage:
        yield {**base, "choices": [], "usage": usage(req)}

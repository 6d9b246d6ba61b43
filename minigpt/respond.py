"""Ask a model instructions and get text back: the prompt template, generation and decoding in one
place, so that SFT evaluation, labelling, PPO, evaluation and chat all see the same thing."""

from dataclasses import dataclass

import torch

from minigpt.data import as_conversation, encode_conversation
from minigpt.sampling import generate


@dataclass
class Responses:
    texts: list            # decoded responses, end-of-text removed
    tokens: torch.Tensor   # (B, N) sampled ids: the response, its end-of-text, then pad
    logprobs: torch.Tensor  # (B, N) log-prob of each sampled token under the sampling distribution; 0 at pad
    prompts: list          # the token ids of each rendered prompt
    eos: list              # did the row end with end-of-text (else it hit max_new_tokens)


def encode_prompts(tokenizer, prompts, block_size, max_new_tokens):
    """Render each prompt (an instruction, or a conversation ending with a user message) through the chat
    template; keep the prompt's last tokens if it is too long."""
    room = block_size - max_new_tokens
    if room <= 0:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in block_size "
                         f"{block_size}")
    return [encode_conversation(tokenizer, as_conversation(p))[0][-room:] for p in prompts]


def respond(model, tokenizer, instructions, max_new_tokens=32, temperature=1.0, top_k=None, top_p=None,
            generator=None, batch_size=64):
    """Sample one response per prompt (an instruction or a conversation), in batches. Returns Responses."""
    prompts = encode_prompts(tokenizer, instructions, model.config.block_size, max_new_tokens)
    texts, tokens, logprobs, eos = [], [], [], []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i: i + batch_size]
        toks, lps = generate(model, chunk, max_new_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                             temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        for row in toks.tolist():
            real = [t for t in row if t != tokenizer.pad_id]
            ended = bool(real) and real[-1] == tokenizer.eos_id
            texts.append(tokenizer.decode(real[:-1] if ended else real).strip())
            eos.append(ended)
        # pad every chunk to max_new_tokens so chunks concatenate
        pad = max_new_tokens - toks.shape[1]
        tokens.append(torch.nn.functional.pad(toks, (0, pad), value=tokenizer.pad_id))
        logprobs.append(torch.nn.functional.pad(lps, (0, pad), value=0.0))
    return Responses(texts, torch.cat(tokens), torch.cat(logprobs), prompts, eos)

"""Properties of the transformer: attention paths agree, causality, padding invariance, KV cache,
GPT-2 init, Hugging Face checkpoint loading, and the reward model's last-token score."""

import copy
import json
import math
import struct

import pytest
import torch

from minigpt.model import GPT, GPTConfig, KVCache, RewardModel, read_safetensors

torch.set_num_threads(1)

TINY = dict(block_size=64, vocab_size=61, n_layer=2, n_head=4, n_embd=32)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **overrides}))
    # Larger-than-init weights so differences (masking bugs, wrong positions) show up well above 1e-5.
    with torch.no_grad():
        model.transformer.wpe.weight.normal_(0, 0.5)
        model.transformer.wte.weight.normal_(0, 0.5)
    return model.eval()


def flash_twin(model):
    twin = copy.deepcopy(model)
    twin.config.flash = not model.config.flash
    for block in twin.transformer.h:
        block.attn.flash = twin.config.flash
    return twin


def padded_batch():
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15]]
    T = max(map(len, prompts))
    idx = torch.zeros(len(prompts), T, dtype=torch.long)  # pad id 0
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for r, p in enumerate(prompts):
        idx[r, T - len(p):] = torch.tensor(p)
        mask[r, T - len(p):] = 1
    return prompts, idx, mask


def test_manual_attention_matches_sdpa():
    manual = tiny_model()
    flash = flash_twin(manual)
    assert not manual.config.flash and flash.config.flash
    idx = torch.randint(0, TINY["vocab_size"], (2, 20))
    assert torch.allclose(manual(idx), flash(idx), atol=1e-5, rtol=0)
    _, idx, mask = padded_batch()
    a, b = manual(idx, attention_mask=mask), flash(idx, attention_mask=mask)
    real = mask.bool()
    assert torch.allclose(a[real], b[real], atol=1e-5, rtol=0)


def test_manual_attention_matches_sdpa_with_cache():
    manual = tiny_model()
    flash = flash_twin(manual)
    _, idx, mask = padded_batch()
    B, T = idx.shape
    outs = []
    for model in (manual, flash):
        cache = KVCache(model.config, B)
        first = model(idx[:, :4], attention_mask=mask[:, :4], kv_cache=cache)
        rest = model(idx[:, 4:], attention_mask=mask, kv_cache=cache)
        outs.append(torch.cat([first, rest], dim=1))
    real = mask.bool()
    assert torch.allclose(outs[0][real], outs[1][real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("flash", [False, True])
def test_causality(flash):
    model = tiny_model(flash=flash)
    idx = torch.randint(0, TINY["vocab_size"], (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % TINY["vocab_size"]
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :10], b[:, :10])  # the past does not see the future
    assert not torch.allclose(a[:, 10:], b[:, 10:])  # ...but the change itself does matter


@pytest.mark.parametrize("flash", [False, True])
def test_left_padded_row_equals_prompt_alone(flash):
    model = tiny_model(flash=flash)
    prompts, idx, mask = padded_batch()
    logits = model(idx, attention_mask=mask)
    for r, p in enumerate(prompts):
        alone = model(torch.tensor([p]))[0]
        assert torch.allclose(logits[r, -len(p):], alone, atol=1e-5, rtol=0)


def test_position_ids_from_mask_and_cache_offset():
    model = tiny_model()
    _, idx, mask = padded_batch()
    explicit = (mask.cumsum(-1) - 1).clamp(min=0)
    assert torch.equal(model(idx, attention_mask=mask),
                       model(idx, attention_mask=mask, position_ids=explicit))
    # Without a mask, positions after a cache continue where the cache left off.
    seq = torch.randint(0, TINY["vocab_size"], (1, 12))
    cache = KVCache(model.config, 1)
    model(seq[:, :5], kv_cache=cache)
    assert cache.pos == 5
    tail = model(seq[:, 5:], kv_cache=cache)
    assert torch.allclose(tail, model(seq)[:, 5:], atol=1e-5, rtol=0)


def test_fully_padded_query_rows_are_finite():
    for flash in (False, True):
        model = tiny_model(flash=flash)
        idx = torch.randint(0, TINY["vocab_size"], (2, 6))
        mask = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
        assert torch.isfinite(model(idx, attention_mask=mask)).all()


def test_kv_cache_matches_full_forward():
    model = tiny_model()
    prompts, idx, mask = padded_batch()
    full = model(idx, attention_mask=mask)
    cache = KVCache(model.config, idx.size(0))
    steps = [model(idx[:, :3], attention_mask=mask[:, :3], kv_cache=cache)]
    for t in range(3, idx.size(1)):  # then one token at a time
        steps.append(model(idx[:, t:t + 1], attention_mask=mask[:, :t + 1], kv_cache=cache))
    cached = torch.cat(steps, dim=1)
    real = mask.bool()
    assert torch.allclose(cached[real], full[real], atol=1e-5, rtol=0)
    assert cache.pos == idx.size(1)


def test_length_limits_raise():
    model = tiny_model()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, TINY["block_size"] + 1, dtype=torch.long))
    cache = KVCache(model.config, 1, max_len=4)
    with pytest.raises(ValueError, match="cache"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))


def test_gpt2_init():
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=64, n_layer=8, n_head=2, n_embd=64)
    model = GPT(config)
    scaled = 0.02 / math.sqrt(2 * config.n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert abs(p.std().item() - scaled) < 0.1 * scaled, name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert abs(p.std().item() - 0.02) < 0.1 * 0.02, name
        elif name.endswith("bias") and "ln_" not in name:
            assert torch.all(p == 0), name
    assert model.lm_head.weight is model.transformer.wte.weight


def test_mlp_uses_gpt2_tanh_gelu():
    model = tiny_model()
    mlp = model.transformer.h[0].mlp
    x = torch.randn(4, TINY["n_embd"]) * 3
    h = mlp.c_fc(x)
    gelu = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    assert torch.allclose(mlp(x), mlp.c_proj(gelu), atol=1e-6)


def test_num_params_and_flops():
    model = tiny_model()
    c = model.config
    per_layer = (2 * c.n_embd + 3 * c.n_embd * c.n_embd + 3 * c.n_embd + c.n_embd * c.n_embd + c.n_embd
                 + 2 * c.n_embd + 8 * c.n_embd * c.n_embd + 4 * c.n_embd + c.n_embd)
    expected = c.vocab_size * c.n_embd + c.block_size * c.n_embd + c.n_layer * per_layer + 2 * c.n_embd
    assert model.num_params() == expected  # tied lm_head counted once
    assert model.num_params(non_embedding=True) == expected - c.block_size * c.n_embd
    n = model.num_params(non_embedding=True)
    assert model.flops_per_token() == 6 * n + 12 * c.n_layer * c.n_embd * c.block_size


def test_gpt2_small_preset_is_gpt2_sized():
    """The README's one-GPU preset (12 layers, 12 heads, 768 wide, 1,024 context) with GPT-2's 50,257 tokens
    has GPT-2 small's published 124,439,808 parameters; our pad token adds one row of 768."""
    with torch.device("meta"):                 # shapes only: no 500 MB of memory, no initialisation time
        gpt2 = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257))
        ours = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50258))
    assert gpt2.num_params() == 124_439_808
    assert ours.num_params() == 124_439_808 + 768


def test_dropout_only_in_training():
    model = tiny_model(dropout=0.5)
    idx = torch.randint(0, TINY["vocab_size"], (1, 8))
    assert torch.equal(model(idx), model(idx))
    model.train()
    assert not torch.equal(model(idx), model(idx))


def test_return_hidden_and_trunk():
    model = tiny_model()
    idx = torch.randint(0, TINY["vocab_size"], (2, 8))
    logits, hidden = model(idx, return_hidden=True)
    assert hidden.shape == (2, 8, TINY["n_embd"])
    assert torch.equal(hidden, model.trunk(idx))
    assert torch.allclose(logits, hidden @ model.transformer.wte.weight.T, atol=1e-6)


# ---------------------------------------------------------------- Hugging Face GPT-2 checkpoints

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_state_dict(config, prefix):
    """Random tensors in the HF GPT-2 layout: Conv1D weights stored (in, out), causal-mask buffers."""
    g = torch.Generator().manual_seed(1)
    C, sd = config.n_embd, {}

    def put(name, *shape):
        sd[prefix + name] = torch.randn(*shape, generator=g)

    put("wte.weight", config.vocab_size, C)
    put("wpe.weight", config.block_size, C)
    for i in range(config.n_layer):
        h = f"h.{i}."
        put(h + "ln_1.weight", C), put(h + "ln_1.bias", C)
        put(h + "attn.c_attn.weight", C, 3 * C), put(h + "attn.c_attn.bias", 3 * C)
        put(h + "attn.c_proj.weight", C, C), put(h + "attn.c_proj.bias", C)
        put(h + "ln_2.weight", C), put(h + "ln_2.bias", C)
        put(h + "mlp.c_fc.weight", C, 4 * C), put(h + "mlp.c_fc.bias", 4 * C)
        put(h + "mlp.c_proj.weight", 4 * C, C), put(h + "mlp.c_proj.bias", C)
        sd[prefix + h + "attn.bias"] = torch.ones(1, 1, config.block_size, config.block_size).tril()
        sd[prefix + h + "attn.masked_bias"] = torch.tensor(-1e4)
    put("ln_f.weight", C), put("ln_f.bias", C)
    if prefix:
        sd["lm_head.weight"] = sd[prefix + "wte.weight"]
    return sd


def write_safetensors(path, tensors, dtype="F32"):
    """A minimal safetensors writer: header length, JSON header, raw little-endian bytes."""
    torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        data = t.to(torch_dtype).reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))


def write_hf_folder(folder, config, fmt, prefix="", dtype="F32", sd=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dict(
        n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
        n_positions=config.block_size, vocab_size=config.vocab_size, model_type="gpt2")))
    sd = hf_state_dict(config, prefix) if sd is None else sd
    if fmt == "safetensors":
        write_safetensors(folder / "model.safetensors", sd, dtype)
    else:
        torch.save(sd, folder / "pytorch_model.bin")
    return sd


def assert_weights_landed(model, sd, prefix, dtype=torch.float32):
    ours = model.state_dict()
    for key, tensor in sd.items():
        name = key.removeprefix(prefix)
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue
        expected = tensor.to(dtype).float()
        if name.endswith(CONV1D):
            expected = expected.t()
        assert torch.equal(ours["transformer." + name], expected), key
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


@pytest.mark.parametrize("fmt,prefix,dtype", [
    ("safetensors", "", "F32"),
    ("safetensors", "transformer.", "F16"),
    ("safetensors", "", "BF16"),
    ("bin", "", None),
    ("bin", "transformer.", None),
])
def test_from_pretrained_round_trip(tmp_path, fmt, prefix, dtype):
    config = GPTConfig(block_size=16, vocab_size=23, n_layer=2, n_head=2, n_embd=8)
    sd = write_hf_folder(tmp_path, config, fmt, prefix, dtype)
    model = GPT.from_pretrained(tmp_path)
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd) == (2, 2, 8)
    assert (model.config.block_size, model.config.vocab_size) == (16, 23)
    torch_dtype = {"F16": torch.float16, "BF16": torch.bfloat16}.get(dtype, torch.float32)
    assert_weights_landed(model, sd, prefix, torch_dtype)
    # And the loaded model computes the GPT-2 formula with those weights (c_attn as x @ W_conv1d + b).
    x = model.transformer.ln_f(torch.randn(1, 3, 8))
    w, b = sd[prefix + "h.0.attn.c_attn.weight"].to(torch_dtype).float(), sd[prefix + "h.0.attn.c_attn.bias"]
    assert torch.allclose(model.transformer.h[0].attn.c_attn(x), x @ w + b.to(torch_dtype).float(), atol=1e-5)


def test_read_safetensors_ignores_metadata(tmp_path):
    t = {"a": torch.arange(6.0).reshape(2, 3), "empty": torch.zeros(0)}
    write_safetensors(tmp_path / "x.safetensors", t)
    got = read_safetensors(tmp_path / "x.safetensors")
    assert set(got) == {"a", "empty"} and torch.equal(got["a"], t["a"])


def test_from_pretrained_errors_name_key_and_folder(tmp_path):
    config = GPTConfig(block_size=16, vocab_size=23, n_layer=2, n_head=2, n_embd=8)
    good = hf_state_dict(config, "")

    missing = dict(good)
    del missing["h.1.mlp.c_fc.bias"]
    write_hf_folder(tmp_path / "missing", config, "safetensors", sd=missing)
    with pytest.raises(ValueError, match=r"missing.*h\.1\.mlp\.c_fc\.bias") as e:
        GPT.from_pretrained(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(e.value)

    extra = dict(good, **{"h.0.attn.rotary.weight": torch.zeros(3)})
    write_hf_folder(tmp_path / "extra", config, "bin", sd=extra)
    with pytest.raises(ValueError, match=r"unexpected.*h\.0\.attn\.rotary\.weight"):
        GPT.from_pretrained(tmp_path / "extra")

    # An nn.Linear-oriented (non-transposed) c_fc weight is a shape error, not a silent mis-load.
    wrong = dict(good, **{"h.0.mlp.c_fc.weight": good["h.0.mlp.c_fc.weight"].t().contiguous()})
    write_hf_folder(tmp_path / "wrong", config, "safetensors", sd=wrong)
    with pytest.raises(ValueError, match=r"h\.0\.mlp\.c_fc\.weight.*shape"):
        GPT.from_pretrained(tmp_path / "wrong")

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(dict(n_layer=1, n_head=1, n_embd=4,
                                                                    vocab_size=5)))
    with pytest.raises(ValueError, match="safetensors"):
        GPT.from_pretrained(tmp_path / "empty")

    # a config.json without one of the sizes: a ValueError naming the file and the key, not a KeyError
    (tmp_path / "novocab").mkdir()
    (tmp_path / "novocab" / "config.json").write_text(json.dumps(dict(n_layer=1, n_head=1, n_embd=4)))
    with pytest.raises(ValueError) as e:
        GPT.from_pretrained(tmp_path / "novocab")
    assert str(e.value) == (f"{tmp_path / 'novocab' / 'config.json'}: field 'vocab_size' missing "
                            "(a GPT-2 config.json has it)")


# ---------------------------------------------------------------- reward model

def test_reward_score_picks_last_real_token_left_and_right_padded():
    torch.manual_seed(0)
    rm = RewardModel(GPTConfig(**TINY)).eval()
    with torch.no_grad():
        rm.head.weight.normal_(0, 1.0)
    seqs = [[5, 6, 7, 8, 9], [3, 4], [12, 13, 14], [7]]
    alone = torch.stack([rm(torch.tensor([s]))[0, -1] for s in seqs])
    T = max(map(len, seqs))
    for side in ("left", "right"):
        idx = torch.zeros(len(seqs), T, dtype=torch.long)
        mask = torch.zeros(len(seqs), T, dtype=torch.long)
        for r, s in enumerate(seqs):
            cols = slice(T - len(s), T) if side == "left" else slice(0, len(s))
            idx[r, cols], mask[r, cols] = torch.tensor(s), 1
        assert torch.allclose(rm.score(idx, mask), alone, atol=1e-5, rtol=0), side
    # Distinct values per position, so picking the wrong column would have been caught.
    assert rm(torch.tensor([seqs[0]]))[0].unique().numel() == len(seqs[0])


def test_reward_forward_skips_lm_head():
    rm = RewardModel(GPTConfig(**TINY))
    calls = []
    rm.gpt.lm_head.register_forward_hook(lambda *a: calls.append(1))
    values = rm(torch.randint(0, TINY["vocab_size"], (2, 7)))
    assert values.shape == (2, 7) and not calls


def test_reward_from_gpt_copies_trunk_and_zeroes_head():
    gpt = tiny_model()
    rm = RewardModel.from_gpt(gpt)
    idx = torch.randint(0, TINY["vocab_size"], (2, 7))
    assert torch.equal(rm.gpt.trunk(idx), gpt.trunk(idx))
    assert torch.all(rm(idx) == 0)
    with torch.no_grad():
        gpt.transformer.h[0].mlp.c_fc.weight.add_(1.0)  # a deep copy: the policy's weights are not shared
    assert not torch.equal(rm.gpt.transformer.h[0].mlp.c_fc.weight, gpt.transformer.h[0].mlp.c_fc.weight)

"""A tiny random Llama with three PEFT adapters: lora-dispatch's mixed batch vs PEFT's forward."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytest.importorskip("safetensors")

import lora_dispatch as ld  # noqa: E402
from lora_dispatch.nn import LoRALinear, LoRASlice  # noqa: E402

SEQ = 6
VOCAB = 128


def _tiny_llama(dtype=torch.float32):
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    return model.to(dtype)


# name -> (LoraConfig kwargs). Different ranks and module sets, one with rank/alpha patterns,
# one with rsLoRA; "attn" leaves k_proj out of the fused qkv (a None slice).
ADAPTERS = {
    "attn": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"]),
    "patterns": dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "gate_proj", "down_proj"],
        rank_pattern={"down_proj": 12, "layers.1.self_attn.v_proj": 6},
        alpha_pattern={"gate_proj": 32, r"model\.layers\.0\.self_attn\.k_proj": 2},
    ),
    "rslora": dict(r=16, lora_alpha=8, use_rslora=True,
                   target_modules=["k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = _tiny_llama()
    root = tmp_path_factory.mktemp("adapters")
    peft_models, paths = {}, {}
    for i, (name, kw) in enumerate(ADAPTERS.items()):
        pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(lora_dropout=0.0, **kw))
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for pname, p in pm.named_parameters():
                if "lora_B" in pname:  # PEFT initialises B to zero
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        pm.eval()
        pm.save_pretrained(root / name)
        peft_models[name] = pm
        paths[name] = root / name
    return base, peft_models, paths


def _rel(out, ref, base):
    return ((out.double() - ref.double()).norm() / (ref.double() - base.double()).norm()).item()


def _patched(base, dtype=torch.float32, **kw):
    model = copy.deepcopy(base).to(dtype)
    handle = ld.patch_model(model, num_slots=4, max_rank=16, **kw)
    return model, handle


def test_patch_structure(setup):
    base, _, _ = setup
    model, handle = _patched(base)
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.qkv_proj, LoRALinear) and attn.qkv_proj.lora.num_slices == 3
    assert isinstance(attn.k_proj, LoRASlice)
    assert isinstance(model.model.layers[1].mlp.gate_up_proj, LoRALinear)
    assert isinstance(model.model.layers[1].mlp.down_proj, LoRALinear)
    assert len(handle.layers) == 2 * 4
    assert torch.equal(attn.k_proj.weight, base.model.layers[0].self_attn.k_proj.weight)
    t = handle.targets()["model.layers.0.self_attn.qkv_proj"][1]
    assert t == [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]


@pytest.mark.parametrize("fuse", [True, False])
def test_mixed_batch_matches_peft_fp32(setup, fuse):
    base, peft_models, paths = setup
    model, handle = _patched(base, fuse=fuse)
    slots = {}
    for slot, name in enumerate(ADAPTERS):
        info = handle.load_adapter(paths[name], slot)
        slots[name] = slot
        assert info.modules, name
    # rank/alpha patterns and rsLoRA were read as PEFT does
    info = handle.load_adapter(paths["patterns"], slots["patterns"])
    assert info.modules["model.layers.0.mlp.down_proj"] == (12, 8 / 12)
    assert info.modules["model.layers.1.self_attn.v_proj"] == (6, 8 / 6)
    assert info.modules["model.layers.0.mlp.gate_proj"] == (4, 32 / 4)
    assert info.modules["model.layers.0.self_attn.k_proj"] == (4, 2 / 4)
    assert info.modules["model.layers.1.self_attn.k_proj"] == (4, 8 / 4)
    info = handle.load_adapter(paths["rslora"], slots["rslora"])
    assert info.modules["model.layers.0.mlp.up_proj"] == (16, 8 / 4)

    g = torch.Generator().manual_seed(7)
    order = ["rslora", None, "attn", "patterns", "attn"]  # one sequence without adapter
    ids = torch.randint(0, VOCAB, (len(order), SEQ), generator=g)
    seq_slots = [-1 if n is None else slots[n] for n in order]
    with torch.no_grad():
        base_logits = base(ids).logits
        with handle.adapters(seq_slots):
            out = model(ids).logits
        # the same routing as an explicit, packed batch
        with handle.batch(ld.LoRABatch.from_segments([SEQ] * len(order), seq_slots)):
            out_b = model(ids).logits
        no_lora = model(ids).logits  # outside the context: base model
        refs = {n: peft_models[n](ids).logits for n in ADAPTERS}
    torch.testing.assert_close(out_b, out, rtol=0, atol=1e-6)
    torch.testing.assert_close(no_lora, base_logits, rtol=1e-5, atol=1e-5)
    for i, name in enumerate(order):
        if name is None:
            torch.testing.assert_close(out[i], base_logits[i], rtol=1e-5, atol=1e-5)
            continue
        ref = refs[name][i]
        assert (ref - base_logits[i]).abs().max() > 1e-2, "adapter delta too small to test"
        err = _rel(out[i], ref, base_logits[i])
        assert err <= 1e-3, (name, err)


def test_mixed_batch_matches_peft_bf16(setup):
    base, peft_models, paths = setup
    model, handle = _patched(base, dtype=torch.bfloat16)
    for slot, name in enumerate(ADAPTERS):
        handle.load_adapter(paths[name], slot)
    g = torch.Generator().manual_seed(8)
    order = list(ADAPTERS) + [None]
    ids = torch.randint(0, VOCAB, (len(order), SEQ), generator=g)
    seq_slots = [-1 if n is None else i for i, n in enumerate(order)]
    with torch.no_grad():
        base_logits = base(ids).logits  # fp32
        with handle.adapters(seq_slots):
            out = model(ids).logits.float()
        for i, name in enumerate(order):
            if name is None:
                continue
            ref = peft_models[name](ids).logits[i]  # fp32 PEFT reference
            # bf16 end to end (base model included) against fp32 (measured ~7e-3)
            err = _rel(out[i], ref, base_logits[i])
            assert err <= 2e-2, (name, err)


def test_unload_and_reload(setup):
    base, peft_models, paths = setup
    model, handle = _patched(base)
    handle.load_adapter(paths["attn"], 2)
    ids = torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with handle.adapters([2]):
            a = model(ids).logits
        handle.unload_adapter(2)
        with handle.adapters([2]):
            b = model(ids).logits
        ref = base(ids).logits
    torch.testing.assert_close(b, ref, rtol=1e-5, atol=1e-5)
    assert (a - ref).abs().max() > 1e-2


def test_state_dict_pair_and_adapter_name(setup):
    """A live PeftModel's state dict (keys with '.default.') loads like the saved directory."""
    base, peft_models, paths = setup
    pm = peft_models["attn"]
    sd = {k: v for k, v in pm.state_dict().items() if "lora_" in k}
    assert any(".lora_A.default.weight" in k for k in sd)
    cfg = pm.peft_config["default"]
    _, h1 = _patched(base)
    _, h2 = _patched(base)
    h1.load_adapter(paths["attn"], 0)
    h2.load_adapter((sd, cfg), 0, adapter_name="default")
    for name, layer in h1.layers.items():
        assert torch.equal(layer.lora.lora_a, h2.layers[name].lora.lora_a), name
        assert torch.equal(layer.lora.lora_b, h2.layers[name].lora.lora_b), name
        assert layer.lora.host_scalings == h2.layers[name].lora.host_scalings


def test_kv_cache_decode_step(setup):
    """A prefill then a cached decode step (new input shape) in one adapters() context."""
    base, peft_models, paths = setup
    model, handle = _patched(base)
    names = list(ADAPTERS)
    for slot, name in enumerate(names):
        handle.load_adapter(paths[name], slot)
    ids = torch.randint(0, VOCAB, (len(names), SEQ + 1), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        with handle.adapters(list(range(len(names)))):
            pre = model(ids[:, :-1], use_cache=True)
            step = model(ids[:, -1:], past_key_values=pre.past_key_values).logits
        base_step = base(ids).logits[:, -1:]
        for i, name in enumerate(names):
            pm = peft_models[name]
            p = pm(ids[:, :-1], use_cache=True)
            ref = pm(ids[:, -1:], past_key_values=p.past_key_values).logits
            assert _rel(step[i], ref[i], base_step[i]) <= 1e-3, name


def test_static_batch_matches_dynamic(setup):
    """The CUDA-graph path (LoRABatch.empty + update_) gives the same logits, on the CPU."""
    base, _, paths = setup
    model, handle = _patched(base)
    for slot, name in enumerate(ADAPTERS):
        handle.load_adapter(paths[name], slot)
    seq_slots = [2, -1, 0, 1]
    ids = torch.randint(0, VOCAB, (len(seq_slots), SEQ), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        with handle.adapters(seq_slots):
            ref = model(ids).logits
        static = handle.static_batch(len(seq_slots) * SEQ)
        static.update_([s for s in seq_slots for _ in range(SEQ)])
        out = model(ids).logits
        static.update_([-1] * 3)  # refilled in place: now no adapter anywhere
        none = model(ids).logits
        handle.set_batch(None)
        plain = model(ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(none, plain, rtol=0, atol=1e-6)
    with torch.inference_mode(), handle.adapters(seq_slots):  # as vLLM runs models
        inf = model(ids).logits
    torch.testing.assert_close(inf, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fuse", [False, True])
def test_torch_compile_fullgraph_patched_model(setup, fuse):
    """A patched model traces with fullgraph=True; refilling the static batch does not recompile."""
    from torch._dynamo.testing import CompileCounterWithBackend

    base, _, paths = setup
    model, handle = _patched(base, fuse=fuse)
    for slot, name in enumerate(ADAPTERS):
        handle.load_adapter(paths[name], slot)
    ids = torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(5))
    static = handle.static_batch(4 * SEQ)
    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("inductor")
    f = torch.compile(lambda i: model(i).logits, backend=cnt, fullgraph=True)
    with torch.no_grad():
        for seq_slots in ([2, -1, 0, 1], [0, 0, 1, -1], [-1, -1, -1, -1]):
            static.update_([s for s in seq_slots for _ in range(SEQ)])
            ref = model(ids).logits
            torch.testing.assert_close(f(ids), ref, rtol=1e-4, atol=1e-4)
    assert cnt.frame_count == 1


def test_model_to_moves_lora_weights(setup):
    """model.to(device) carries the LoRA weights along (they are not module buffers)."""
    base, _, paths = setup
    model, handle = _patched(base)
    handle.load_adapter(paths["attn"], 0)
    lin = next(m for m in model.modules() if isinstance(m, LoRALinear))
    ranks = list(lin.lora.host_ranks)
    model.to("meta")
    assert lin.lora.device.type == "meta"
    assert lin.lora.lora_a.device.type == "meta" and lin.lora.ranks.device.type == "meta"
    assert lin.lora.host_ranks == ranks


@pytest.mark.gpu
def test_model_cuda_after_patch(setup):
    base, peft_models, paths = setup
    model, handle = _patched(base)
    handle.load_adapter(paths["attn"], 0)
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), handle.adapters([0, -1]):
        ref = model(ids).logits
        model.cuda()
        out = model(ids.cuda()).logits.cpu()
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)

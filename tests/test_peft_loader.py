"""PEFT adapter loader: key naming, scaling, patterns, targets and its error cases."""

from __future__ import annotations

import json
import math

import pytest
import torch

import lora_dispatch as ld
from lora_dispatch.peft import llama_targets, read_peft_adapter

K, Q, KV, R = 16, 16, 8, 4
P = "base_model.model.model.layers.0.self_attn."


def _ab(out, r=R, k=K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, k, generator=g), torch.randn(out, r, generator=g)


def _state(mods, prefix=P, adapter=None, r=R):
    """PEFT keys for modules {name: out_features}."""
    sd = {}
    mid = f".{adapter}" if adapter else ""
    for i, (m, out) in enumerate(mods.items()):
        a, b = _ab(out, r=r if isinstance(r, int) else r[m], seed=i)
        sd[f"{prefix}{m}.lora_A{mid}.weight"] = a
        sd[f"{prefix}{m}.lora_B{mid}.weight"] = b
    return sd


def _cfg(**kw):
    return {"peft_type": "LORA", "r": R, "lora_alpha": 8, **kw}


def _targets(max_rank=8, slots=2):
    qkv = ld.LoRAWeights(slots, K, (Q, KV, KV), max_rank, dtype=torch.float32)
    o = ld.LoRAWeights(slots, Q, Q, max_rank, dtype=torch.float32)
    return {
        "qkv": (qkv, ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                      "model.layers.0.self_attn.v_proj"]),
        "o": (o, ["model.layers.0.self_attn.o_proj"]),
    }


def _dense_delta(w, slot, x):
    """float64 delta of ``w``'s slot from its stored tensors (independent of the ops)."""
    out = []
    r = w.host_ranks[slot]
    for i, (off, n) in enumerate(zip(w.slice_offsets, w.out_features)):
        a = w.lora_a[slot, i * r:(i + 1) * r].double()
        b = w.lora_b[slot, off:off + n, :r].double()
        out.append(w.host_scalings[slot][i] * (x.double() @ a.T) @ b.T)
    return torch.cat(out, 1)


def test_loads_slices_and_none_slices():
    sd = _state({"q_proj": Q, "v_proj": KV})
    t = _targets()
    info = ld.load_peft_adapter((sd, _cfg()), 1, t)
    qkv, o = t["qkv"][0], t["o"][0]
    assert info.layers == {"qkv": R, "o": 0}
    assert qkv.host_ranks == [0, R] and o.host_ranks == [0, 0]
    assert qkv.host_scalings[1][0] == 2.0 and qkv.host_scalings[1][2] == 2.0
    x = torch.randn(3, K, dtype=torch.float64)
    delta = _dense_delta(qkv, 1, x)
    a_q, b_q = sd[P + "q_proj.lora_A.weight"], sd[P + "q_proj.lora_B.weight"]
    torch.testing.assert_close(delta[:, :Q], 2.0 * (x @ a_q.double().T) @ b_q.double().T)
    assert delta[:, Q:Q + KV].abs().max() == 0  # k not targeted
    # the ops agree: add_lora on a batch through slot 1
    base = torch.zeros(3, Q + 2 * KV)
    ld.add_lora(base, x.float(), qkv, ld.LoRABatch.from_token_adapters([1, 1, 1]))
    torch.testing.assert_close(base.double(), delta, rtol=1e-5, atol=1e-5)


def test_directory_safetensors_and_bin(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    sd = _state({"q_proj": Q, "o_proj": Q})
    for kind in ("st", "bin"):
        d = tmp_path / kind
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps(_cfg()))
        if kind == "st":
            safetensors.save_file(sd, str(d / "adapter_model.safetensors"))
        else:
            torch.save(sd, d / "adapter_model.bin")
        t = _targets()
        info = ld.load_peft_adapter(d, 0, t)
        assert info.layers == {"qkv": R, "o": R}
        torch.testing.assert_close(t["o"][0].lora_a[0, :R], sd[P + "o_proj.lora_A.weight"])
    state, cfg = read_peft_adapter(str(tmp_path / "st"))
    assert set(state) == set(sd) and cfg["r"] == R


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ld.load_peft_adapter(tmp_path / "nope", 0, _targets())
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        ld.load_peft_adapter(tmp_path, 0, _targets())
    (tmp_path / "adapter_config.json").write_text(json.dumps(_cfg()))
    with pytest.raises(FileNotFoundError, match="adapter_model"):
        ld.load_peft_adapter(tmp_path, 0, _targets())
    with pytest.raises(TypeError, match="directory or a"):
        ld.load_peft_adapter(42, 0, _targets())


def test_adapter_name_in_keys():
    sd = {**_state({"q_proj": Q}, adapter="default"), **_state({"o_proj": Q}, adapter="other")}
    with pytest.raises(ValueError, match="several adapters"):
        ld.load_peft_adapter((sd, _cfg()), 0, _targets())
    t = _targets()
    ld.load_peft_adapter((sd, _cfg()), 0, t, adapter_name="other")
    assert t["o"][0].host_ranks[0] == R and t["qkv"][0].host_ranks[0] == 0
    with pytest.raises(ValueError, match="'missing' not in the state dict"):
        ld.load_peft_adapter((sd, _cfg()), 0, _targets(), adapter_name="missing")
    # keys without a name: adapter_name is ignored
    ld.load_peft_adapter((_state({"q_proj": Q}), _cfg()), 0, _targets(), adapter_name="default")


def test_keys_without_prefix_and_suffix_targets():
    sd = _state({"q_proj": Q}, prefix="model.layers.0.self_attn.")
    t = _targets()
    t["qkv"] = (t["qkv"][0], ["layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj",
                              "layers.0.self_attn.v_proj"])
    ld.load_peft_adapter((sd, _cfg()), 0, t)
    assert t["qkv"][0].host_ranks[0] == R


def test_ambiguous_suffix():
    sd = {**_state({"q_proj": Q}), **_state({"q_proj": Q}, prefix="base_model.model.x.")}
    t = {"q": (ld.LoRAWeights(1, K, Q, 8, dtype=torch.float32), ["q_proj"])}
    with pytest.raises(ValueError, match="ambiguous"):
        ld.load_peft_adapter((sd, _cfg()), 0, t)


@pytest.mark.parametrize("rslora", [False, True])
def test_scaling_patterns_and_rslora(rslora):
    ranks = {"q_proj": 6, "k_proj": 2, "v_proj": R, "o_proj": R}
    sd = _state({"q_proj": Q, "k_proj": KV, "v_proj": KV, "o_proj": Q}, r=ranks)
    cfg = _cfg(use_rslora=rslora, lora_alpha=8,
               rank_pattern={"q_proj": 6, r"model\.layers\.0\.self_attn\.k_proj": 2},
               alpha_pattern={"layers.0.self_attn.o_proj": 3, "v_proj": 5})
    t = _targets()
    info = ld.load_peft_adapter((sd, cfg), 0, t)

    def sc(alpha, r):
        return alpha / math.sqrt(r) if rslora else alpha / r

    qkv, o = t["qkv"][0], t["o"][0]
    assert qkv.host_scalings[0] == pytest.approx((sc(8, 6), sc(8, 2), sc(5, R)))
    assert o.host_scalings[0] == pytest.approx((sc(3, R),))
    assert qkv.host_ranks[0] == 6  # max over slices
    assert info.modules["model.layers.0.self_attn.k_proj"][0] == 2


def test_pattern_matches_whole_name_components():
    # "proj" must not match "q_proj" (PEFT: (.*\.)?(key)$), so r stays the default
    sd = _state({"q_proj": Q})
    with pytest.raises(ValueError, match="config gives rank 9"):
        ld.load_peft_adapter((sd, _cfg(rank_pattern={"q_proj": 9, "proj": 1})), 0, _targets())
    ld.load_peft_adapter((sd, _cfg(rank_pattern={"proj": 9})), 0, _targets())


def test_shape_errors_name_module():
    t = _targets()
    sd = _state({"q_proj": Q})
    sd[P + "q_proj.lora_A.weight"] = torch.randn(R, K + 1)
    with pytest.raises(ValueError, match=r"q_proj.*lora_A.weight expected \[r, in_features=16\], "
                                         r"got \[4, 17\]"):
        ld.load_peft_adapter((sd, _cfg()), 0, t)
    sd = _state({"v_proj": Q})  # v is 8 wide
    with pytest.raises(ValueError, match=r"v_proj.*lora_B.weight expected \[out_features=8, r=4\]"
                                         r", got \[16, 4\]"):
        ld.load_peft_adapter((sd, _cfg()), 0, t)
    sd = _state({"q_proj": Q}, r=R)
    with pytest.raises(ValueError, match="rank 4 exceeds max_rank=2"):
        ld.load_peft_adapter((sd, _cfg()), 0, _targets(max_rank=2))
    sd = _state({"q_proj": Q})
    sd[P + "q_proj.lora_A.weight"] = torch.randn(R, K, 1, 1)  # a Conv LoRA
    with pytest.raises(ValueError, match="must be 2-D"):
        ld.load_peft_adapter((sd, _cfg()), 0, t)
    sd = _state({"q_proj": Q})
    del sd[P + "q_proj.lora_B.weight"]
    with pytest.raises(ValueError, match="lora_B.weight is missing"):
        ld.load_peft_adapter((sd, _cfg()), 0, t)
    assert all(w.host_ranks == [0, 0] for w, _ in t.values())  # nothing written


def test_nothing_written_on_error():
    t = _targets()
    ld.load_peft_adapter((_state({"o_proj": Q}), _cfg()), 1, t)
    before = t["o"][0].lora_a.clone()
    sd = {**_state({"q_proj": Q}), **_state({"o_proj": KV})}  # q fine, o wrong -> no write
    with pytest.raises(ValueError, match="o_proj"):
        ld.load_peft_adapter((sd, _cfg()), 1, t)
    assert torch.equal(t["o"][0].lora_a, before) and t["qkv"][0].host_ranks[1] == 0


def test_unused_modules_strict():
    sd = _state({"q_proj": Q, "up_proj": Q})
    with pytest.raises(ValueError, match="no target names.*up_proj"):
        ld.load_peft_adapter((sd, _cfg()), 0, _targets())
    info = ld.load_peft_adapter((sd, _cfg()), 0, _targets(), strict=False)
    assert list(info.modules) == ["model.layers.0.self_attn.q_proj"]


@pytest.mark.parametrize("cfg, match", [
    (dict(use_dora=True), "DoRA"),
    (dict(lora_bias=True), "LoRA biases"),
    (dict(peft_type="IA3"), "only LoRA"),
    (dict(alora_invocation_tokens=[1, 2]), "activated LoRA"),
    (dict(use_qalora=True), "QA-LoRA"),
    (dict(target_parameters=["experts.w"]), "target_parameters"),
])
def test_unsupported_config(cfg, match):
    with pytest.raises(ValueError, match=match):
        ld.load_peft_adapter((_state({"q_proj": Q}), _cfg(**cfg)), 0, _targets())


@pytest.mark.parametrize("key, match", [
    (P + "q_proj.lora_magnitude_vector", "DoRA"),
    ("base_model.model.model.embed_tokens.lora_embedding_A", "embedding"),
    (P + "q_proj.lora_B.bias", "LoRA biases"),
    (P + "q_proj.bias", "base-layer biases"),
    ("base_model.model.score.modules_to_save.default.weight", "modules_to_save"),
    ("base_model.model.something.else", "unrecognized tensor"),
])
def test_unsupported_tensors(key, match):
    sd = _state({"q_proj": Q})
    sd[key] = torch.zeros(4)
    with pytest.raises(ValueError, match=match):
        ld.load_peft_adapter((sd, _cfg(bias="all")), 0, _targets())


def test_modules_to_save_from_config():
    sd = _state({"q_proj": Q})
    sd["base_model.model.lm_head.weight"] = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="modules_to_save"):
        ld.load_peft_adapter((sd, _cfg(modules_to_save=["lm_head"])), 0, _targets())


def test_bad_arguments():
    sd, cfg = _state({"q_proj": Q}), _cfg()
    with pytest.raises(TypeError, match="non-empty mapping"):
        ld.load_peft_adapter((sd, cfg), 0, {})
    t = _targets()
    with pytest.raises(ValueError, match="slot must be in"):
        ld.load_peft_adapter((sd, cfg), 5, t)
    t["qkv"] = (t["qkv"][0], ["model.layers.0.self_attn.q_proj"])
    with pytest.raises(ValueError, match="names 1 modules but its LoRAWeights has 3 slices"):
        ld.load_peft_adapter((sd, cfg), 0, t)
    with pytest.raises(TypeError, match="LoRAWeights"):
        ld.load_peft_adapter((sd, cfg), 0, {"x": ("w", ["a"])})
    with pytest.raises(ValueError, match="no LoRA tensors"):
        ld.load_peft_adapter(({}, cfg), 0, _targets())
    with pytest.raises(TypeError, match="str to Tensor"):
        ld.load_peft_adapter(({"a": 1}, cfg), 0, _targets())


def test_llama_targets():
    qkv = ld.LoRAWeights(2, K, (Q, KV, KV), 8, dtype=torch.float32)
    gu = ld.LoRAWeights(2, K, (32, 32), 8, dtype=torch.float32)
    down = ld.LoRAWeights(2, 32, K, 8, dtype=torch.float32)
    o = ld.LoRAWeights(2, Q, Q, 8, dtype=torch.float32)
    t = llama_targets([{"qkv": qkv, "o_proj": o}, {"gate_up": gu, "down": down}])
    assert t["layers.0.qkv"] == (qkv, [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"])
    assert t["layers.0.o_proj"][1] == ["model.layers.0.self_attn.o_proj"]
    assert t["layers.1.gate_up"][1] == [f"model.layers.1.mlp.{p}_proj" for p in ("gate", "up")]
    with pytest.raises(ValueError, match="unknown projection group"):
        llama_targets([{"qkvo": qkv}])
    with pytest.raises(ValueError, match="has 2 projections"):
        llama_targets([{"gate_up": qkv}])
    sd = _state({"q_proj": Q, "o_proj": Q})
    ld.load_peft_adapter((sd, _cfg()), 1, t, strict=True)
    assert qkv.host_ranks[1] == R and o.host_ranks[1] == R and gu.host_ranks[1] == 0

"""Model loading: policies, MRM adapters (ours and the released Saffron-1), and every error case."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from saffron_runtime.errors import ConfigError, ModelLoadError, TokenizerMismatchError
from saffron_runtime.models import (
    MRMTemplate,
    MultifurcationRewardModel,
    check_vocab_compatible,
    load_mrm,
    load_policy,
    load_unseen_mask,
    save_mrm,
    validate_safetensors,
)
from saffron_runtime.testing import tiny_causal_lm, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny) -> Path:
    d = tmp_path_factory.mktemp("tiny-policy")
    tiny.policy.save_pretrained(d)
    tiny.tokenizer.save_pretrained(d)
    return d


def test_load_policy_from_folder_roundtrips(tiny_folder, tiny):
    loaded = load_policy(tiny_folder, chat=True, dtype="float32")
    assert loaded.tokenizer.get_vocab() == tiny.tokenizer.get_vocab()
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(loaded.model(ids).logits, tiny.policy(ids).logits)
    assert not loaded.model.training


def test_load_policy_bfloat16(tiny_folder):
    assert load_policy(tiny_folder, dtype="bfloat16").model.dtype == torch.bfloat16


def test_bad_dtype_names_the_choices(tiny_folder):
    with pytest.raises(ConfigError, match=r"dtype='fp8' is not valid; use one of auto, float32"):
        load_policy(tiny_folder, dtype="fp8")


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no model at .*does-not-exist: the path does not exist"):
        load_policy(tmp_path / "does-not-exist")
    with pytest.raises(ModelLoadError, match=r"no GGUF file at"):
        load_policy(str(tmp_path / "m.gguf"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match=r"not a Hugging Face model folder \(no config.json\)"):
        load_policy(tmp_path)


def test_hub_id_not_cached_explains_offline():
    with pytest.raises(ModelLoadError, match=r"no model hub at run time"):
        load_policy("nobody-here/no-such-model-xyz")


def test_not_a_causal_lm(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"holds a 'vit' model, which is not a causal language model"):
        load_policy(tmp_path)


def test_truncated_weights(tmp_path, tiny_folder):
    d = tmp_path / "m"
    shutil.copytree(tiny_folder, d)
    w = d / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"model.safetensors is truncated.*re-download"):
        load_policy(d)


def test_corrupt_weights_header(tmp_path, tiny_folder):
    d = tmp_path / "m"
    shutil.copytree(tiny_folder, d)
    w = d / "model.safetensors"
    w.write_bytes(b"\xff" * 8 + w.read_bytes()[8:])
    with pytest.raises(ModelLoadError, match=r"corrupt or truncated"):
        load_policy(d)
    w.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"{not json!!!!!!" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"not a valid safetensors file"):
        validate_safetensors(w)


def test_missing_chat_template(tmp_path, tiny_folder):
    d = tmp_path / "m"
    shutil.copytree(tiny_folder, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    for extra in d.glob("chat_template.*"):
        extra.unlink()
    assert load_policy(d).tokenizer.chat_template is None  # fine without chat
    with pytest.raises(ModelLoadError, match=r"has no chat template, which a chat call needs"):
        load_policy(d, chat=True)


def test_model_object_needs_tokenizer(tiny):
    with pytest.raises(ConfigError, match="tokenizer is required"):
        load_policy(tiny.policy)
    assert load_policy(tiny.policy, tokenizer=tiny.tokenizer).model is tiny.policy


# ---------------------------------------------------------------- vocabulary checks


def test_vocab_mismatch_names_what_differs(tiny):
    other = tiny_tokenizer(vocab_size=320, seed=3)
    with pytest.raises(TokenizerMismatchError, match=r"sizes differ \(policy 384, MRM 320\).*token_map"):
        check_vocab_compatible(tiny.tokenizer, other, what="MRM")
    check_vocab_compatible(tiny.tokenizer, tiny.tokenizer)
    ok_map = torch.arange(len(tiny.tokenizer)) % len(other)
    check_vocab_compatible(tiny.tokenizer, other, token_map=ok_map)
    with pytest.raises(TokenizerMismatchError, match="outside"):
        check_vocab_compatible(tiny.tokenizer, other, token_map=ok_map + 1000)


# ---------------------------------------------------------------- MRM adapters


def _tiny_mrm(tiny) -> MultifurcationRewardModel:
    from peft import LoraConfig, get_peft_model

    base = tiny_causal_lm(len(tiny.tokenizer), seed=7)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_()
    mask = torch.zeros(len(tiny.tokenizer), dtype=torch.bool)
    mask[::3] = True
    return MultifurcationRewardModel(
        model=model,
        tokenizer=tiny.tokenizer,
        template=MRMTemplate(prefix="<|im_start|>", separator="\nAgent:"),
        unseen_mask=mask,
    ), base


def test_save_and_load_our_mrm(tmp_path, tiny):
    mrm, base = _tiny_mrm(tiny)
    base_dir = tmp_path / "base"
    tiny_causal_lm(len(tiny.tokenizer), seed=7).save_pretrained(base_dir)
    tiny.tokenizer.save_pretrained(base_dir)
    out = save_mrm(mrm, tmp_path / "mrm", base=str(base_dir), metadata={"note": "test"})
    assert {"adapter_config.json", "adapter_model.safetensors", "unseen_mask.safetensors", "saffron_mrm.json"} <= {
        p.name for p in out.iterdir()
    }
    loaded = load_mrm(out, policy_tokenizer=tiny.tokenizer)
    assert loaded.template == mrm.template
    assert torch.equal(loaded.unseen_mask, mrm.unseen_mask)
    ids = torch.tensor([[3, 4, 5, 6]])
    torch.testing.assert_close(loaded.rewards(ids), mrm.rewards(ids))
    masked = loaded.mask_unseen(loaded.rewards(ids))
    assert (masked[0, ::3] == -1024).all() and (masked[0, 1::3] != -1024).all()


def test_mrm_vocab_mismatch_detected_at_build(tmp_path, tiny):
    mrm, _ = _tiny_mrm(tiny)
    base_dir = tmp_path / "base"
    tiny_causal_lm(len(tiny.tokenizer), seed=7).save_pretrained(base_dir)
    tiny.tokenizer.save_pretrained(base_dir)
    out = save_mrm(mrm, tmp_path / "mrm", base=str(base_dir))
    with pytest.raises(TokenizerMismatchError, match="do not share a tokenizer"):
        load_mrm(out, policy_tokenizer=tiny_tokenizer(vocab_size=320, seed=3))


SAFFRON1_SHAPES = dict(
    hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, vocab_size=256
)


@pytest.fixture(scope="module")
def saffron1_base():
    """A randomly initialised Llama with Saffron-1's attention shapes (FFN 64, small vocabulary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=256, hidden_size=2048, intermediate_size=64, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_released_saffron1_adapter_loads_all_64_tensors(saffron1_base, saffron1_fixture, tiny, caplog):
    from peft.utils import get_peft_model_state_dict

    tok = tiny.tokenizer  # any tokenizer: the test is about the adapter's tensors
    mrm = load_mrm(saffron1_fixture, base=saffron1_base, tokenizer=tok, unseen_mask=False)
    state = get_peft_model_state_dict(mrm.model)
    with safe_open(str(saffron1_fixture / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert len(keys) == 64
        equal = sum(torch.equal(state[k].float(), f.get_tensor(k).float()) for k in keys)
    assert equal == 64
    assert mrm.template.prefix == "<|begin_of_text|>\n\nUser:" and mrm.template.separator == "\n\nAgent:"
    assert mrm.unseen_mask is None
    # the base's lm_head has no bias: lm_head_bias.pt is never applied
    assert mrm.model.get_output_embeddings().bias is None
    mrm.model.unload()  # give the shared base back unwrapped for the next test


def test_adapter_on_wrong_base_is_reported(saffron1_fixture, tiny):
    small = tiny_causal_lm(len(tiny.tokenizer), seed=1)  # hidden 64: shapes cannot match
    with pytest.raises(ModelLoadError, match=r"does not fit the base model"):
        load_mrm(saffron1_fixture, base=small, tokenizer=tiny.tokenizer, unseen_mask=False)


def test_lm_head_bias_file_is_never_loaded(tmp_path, saffron1_fixture, saffron1_base, tiny, caplog):
    d = tmp_path / "saffron1"
    shutil.copytree(saffron1_fixture, d)
    (d / "lm_head_bias.pt").write_bytes(b"this would fail to unpickle")
    with caplog.at_level(logging.WARNING):
        mrm = load_mrm(d, base=saffron1_base, tokenizer=tiny.tokenizer, unseen_mask=False)
    assert "ignoring lm_head_bias.pt" in caplog.text
    mrm.model.unload()


def test_released_unseen_mask_matches_llama3_vocabulary(saffron1_fixture):
    mask = load_unseen_mask(saffron1_fixture / "unseen_mask.pt", 128256)
    assert mask.dtype == torch.bool and mask.shape == (128256,)
    assert 0 < int(mask.sum()) < 128256
    with pytest.raises(ModelLoadError, match=r"covers 128256 tokens but the reward model's vocabulary has 256"):
        load_unseen_mask(saffron1_fixture / "unseen_mask.pt", 256)


def test_unseen_mask_must_be_a_plain_tensor(tmp_path):
    p = tmp_path / "mask.pt"
    torch.save({"not": "a tensor"}, p)
    with pytest.raises(ModelLoadError, match="holds a dict, not a tensor"):
        load_unseen_mask(p, 10)


def test_saffron1_default_base_is_not_available_offline(saffron1_fixture):
    with pytest.raises(ModelLoadError, match=r"meta-llama/Llama-Guard-3-1B.*no model hub"):
        load_mrm(saffron1_fixture)


def test_not_an_adapter_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no reward-model adapter folder"):
        load_mrm(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="adapter_config.json is missing"):
        load_mrm(tmp_path)


def test_partially_matching_base_is_caught(saffron1_fixture, tiny):
    """peft silently skips adapter tensors whose modules are missing: 8 of 16 layers here."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=256, hidden_size=2048, intermediate_size=64, num_hidden_layers=8,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=256,
    )
    half = LlamaForCausalLM(cfg).eval()
    with pytest.raises(ModelLoadError, match=r"did not load completely: 32 of 64 tensors loaded"):
        load_mrm(saffron1_fixture, base=half, tokenizer=tiny.tokenizer, unseen_mask=False)

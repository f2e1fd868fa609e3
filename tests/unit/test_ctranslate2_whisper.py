"""CTranslate2 Whisper -> transformers: a tiny random Whisper written in CTranslate2's
layout (as its converter writes it: `model_spec._serialize`, binary version 6; the
Whisper spec's names, fused Q/K/V with a zero key bias, the output projection an alias
of the embeddings) converts back to the same tensors, bit for bit, and the same model.
"""

import json
import struct

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from speechbrain_cald.models import ctranslate2_whisper as ct2

FLOAT16, INT16 = 4, 2
VOCAB = 60


def tiny_whisper():
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=VOCAB, d_model=16, num_mel_bins=8, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_source_positions=12, max_target_positions=10,
        pad_token_id=0, bos_token_id=1, eos_token_id=0, decoder_start_token_id=1,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # random biases, not the init's zeros: a dropped bias must show
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    return model.half()


def ct2_variables(model):
    """CTranslate2's Whisper variables for an HF model (names of its WhisperSpec)."""
    sd, cfg, out = model.state_dict(), model.config, {}

    def copy(ct2_name, hf_name, bias=True):
        out[f"{ct2_name}/weight"] = sd[f"{hf_name}.weight"]
        if bias:
            out[f"{ct2_name}/bias"] = sd[f"{hf_name}.bias"]

    def norm(ct2_name, hf_name):
        out[f"{ct2_name}/gamma"], out[f"{ct2_name}/beta"] = (
            sd[f"{hf_name}.weight"],
            sd[f"{hf_name}.bias"],
        )

    def fused(ct2_name, attn, names):
        out[f"{ct2_name}/weight"] = torch.cat([sd[f"{attn}.{n}.weight"] for n in names])
        zero = torch.zeros(cfg.d_model, dtype=torch.float16)
        out[f"{ct2_name}/bias"] = torch.cat(
            [zero if n == "k_proj" else sd[f"{attn}.{n}.bias"] for n in names]
        )

    for side, layers in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        out[f"{side}/num_heads"] = torch.tensor(2, dtype=torch.int16)
        out[f"{side}/position_encodings/encodings"] = sd[f"model.{side}.embed_positions.weight"]
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(layers):
            c, h = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fused(f"{c}/self_attention/linear_0", f"{h}.self_attn", ("q_proj", "k_proj", "v_proj"))
            copy(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
            norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            if side == "decoder":
                copy(f"{c}/attention/linear_0", f"{h}.encoder_attn.q_proj")
                fused(f"{c}/attention/linear_1", f"{h}.encoder_attn", ("k_proj", "v_proj"))
                copy(f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj")
                norm(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
            copy(f"{c}/ffn/linear_0", f"{h}.fc1")
            copy(f"{c}/ffn/linear_1", f"{h}.fc2")
            norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
    for conv in ("conv1", "conv2"):
        copy(f"encoder/{conv}", f"model.encoder.{conv}")
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    return out


def write_model_bin(path, variables, aliases, version=6):
    """CTranslate2's model.bin layout (ctranslate2/specs/model_spec.py, _serialize)."""

    def string(f, text):
        f.write(struct.pack("<H", len(text) + 1) + text.encode() + b"\0")

    with open(path, "wb") as f:
        f.write(struct.pack("<I", version))
        string(f, "WhisperSpec")
        f.write(struct.pack("<II", 3, len(variables)))
        for name, tensor in sorted(variables.items()):
            string(f, name)
            f.write(
                struct.pack("<B", tensor.dim()) + struct.pack(f"<{tensor.dim()}I", *tensor.shape)
            )
            data = tensor.contiguous().numpy().tobytes()
            dtype = FLOAT16 if tensor.dtype == torch.float16 else INT16
            f.write(struct.pack("<BI", dtype, len(data)) + data)
        f.write(struct.pack("<I", len(aliases)))
        for alias, target in aliases.items():
            string(f, alias)
            string(f, target)


@pytest.fixture
def ct2_folder(tmp_path):
    model = tiny_whisper()
    folder = tmp_path / "ct2"
    folder.mkdir()
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"}
    write_model_bin(folder / "model.bin", ct2_variables(model), aliases)
    tokens = [f"t{i}" for i in range(VOCAB - 3)] + [
        "<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>",
    ]  # fmt: skip
    (folder / "vocabulary.txt").write_text("\n".join(tokens))
    (folder / "config.json").write_text(
        json.dumps({"suppress_ids": [3], "suppress_ids_begin": [4]})
    )
    return model, folder


def test_converted_folder_is_the_same_model(ct2_folder, tmp_path):
    model, folder = ct2_folder
    ct2.convert_folder(folder, tmp_path / "hf")
    loaded = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.float16)
    expected, got = model.state_dict(), loaded.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == torch.float16 and torch.equal(got[name], tensor), name
    for key in ("d_model", "encoder_layers", "decoder_attention_heads", "max_source_positions"):
        assert getattr(loaded.config, key) == getattr(model.config, key), key
    gen = loaded.generation_config
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.no_timestamps_token_id) == (
        58,
        57,
        59,
    )
    assert gen.suppress_tokens == [3] and gen.begin_suppress_tokens == [4]
    features = torch.randn(1, 8, 24, dtype=torch.float16)
    tokens = torch.tensor([[58, 59, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.float()(features.float(), decoder_input_ids=tokens).logits,
            model.float()(features.float(), decoder_input_ids=tokens).logits,
            rtol=0,
            atol=0,
        )


def test_unknown_layouts_and_damaged_files_are_named(ct2_folder, tmp_path):
    model, folder = ct2_folder
    model_bin = folder / "model.bin"
    data = model_bin.read_bytes()
    model_bin.write_bytes(data[: len(data) // 2])  # truncated inside a tensor
    with pytest.raises(ValueError, match="model.bin: variable .* bytes for shape"):
        ct2.convert_folder(folder, tmp_path / "hf")
    model_bin.write_bytes(data[:30])  # truncated inside the header
    with pytest.raises(ValueError, match="model.bin: not a readable CTranslate2 model.bin"):
        ct2.convert_folder(folder, tmp_path / "hf")
    write_model_bin(model_bin, ct2_variables(model), {}, version=5)
    with pytest.raises(ValueError, match="binary version 5"):
        ct2.convert_folder(folder, tmp_path / "hf")

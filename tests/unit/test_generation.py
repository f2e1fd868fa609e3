"""Recurrent (linear-time) generation of converted GPT-NeoX students (Mamba-1, Mamba2).

Step-by-step decoding through the HF cache equals the full forward on the same tokens
(logits within 1e-4 relative to the largest), prompts of different lengths left-padded
in one batch; HF `generate()` gives the same tokens with and without the cache
(greedy and beam search); `TextGenerator` decodes batched prompts as one at a time.
"""

import pytest
import tokenizers
import torch
import transformers
from transformers import DynamicCache

from speechbrain_cald import conversion, inference
from speechbrain_cald.conversion.cache import RecurrentStateLayer
from speechbrain_cald.tasks import CausalLM

MIXERS = {  # test id: (mixer, mixer_config)
    "mamba": ("mamba", {"d_state": 4, "chunk_size": 8}),
    "mamba2": ("mamba2", {"d_state": 8, "headdim": 8, "chunk_size": 8}),  # in_proj 84 wide
    "mamba2_capped": ("mamba2", {"d_state": 8, "headdim": 8, "chunk_size": 8, "max_timescale": 4}),
}
pytestmark = pytest.mark.filterwarnings("ignore:Mamba2 in_proj width:UserWarning")


def student(name, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPTNeoXConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=256,
    )  # fmt: skip
    teacher = transformers.GPTNeoXForCausalLM(config).eval()
    mixer, mixer_config = MIXERS[name]
    model = conversion.convert_to_student(teacher, {"mixer": mixer, "mixer_config": mixer_config})
    return model[0].eval()


def assert_close(actual, expected):
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("mixer", MIXERS)
def test_step_by_step_decoding_equals_the_full_forward(mixer):
    model = student(mixer)
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 50, (n,), generator=gen) for n in (21, 14, 17)]  # prompt + 8
    prompt = [r[:-8] for r in rows]
    width = max(len(p) for p in prompt)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompt):  # left padding
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    cache = DynamicCache()
    with torch.no_grad():
        logits = [model(ids, attention_mask=mask, cache=cache, use_cache=True).logits[:, -1]]
        for t in range(7):
            step = torch.stack([r[len(r) - 8 + t] for r in rows])[:, None]
            mask = torch.cat([mask, torch.ones_like(step)], dim=1)
            out = model(step, attention_mask=mask, cache=cache, use_cache=True)
            logits.append(out.logits[:, -1])
        for i, row in enumerate(rows):
            full = model(row[None]).logits[0, len(row) - 9 : len(row) - 1]  # the same positions
            assert_close(torch.stack([step[i] for step in logits]), full)
    assert all(isinstance(layer, RecurrentStateLayer) for layer in cache.layers)
    assert cache.get_seq_length() == width + 7


@pytest.mark.parametrize("mixer", MIXERS)
def test_generate_with_and_without_cache_gives_the_same_tokens(mixer):
    model = student(mixer)
    ids = torch.randint(3, 50, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, :4] = mask[2, :7] = 0  # prompts of 10, 6 and 3 tokens, left-padded
    ids[mask == 0] = 0
    runs = {}
    for cache in (True, False):
        with torch.no_grad():
            runs[cache] = [
                model.generate(
                    ids, attention_mask=mask, max_new_tokens=8, use_cache=cache, pad_token_id=0, **k
                )
                for k in ({"do_sample": False}, {"num_beams": 3, "do_sample": False})
            ]
    for with_cache, without in zip(runs[True], runs[False]):
        assert torch.equal(with_cache, without)
    with torch.no_grad():  # a row alone: the batch neighbours and the padding change nothing
        alone = model.generate(ids[2:, 7:], max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(runs[True][0][2, 10:], alone[0, 3:])
    torch.manual_seed(3)
    with torch.no_grad():  # sampling through the cache runs too
        sampled = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=True)
    assert sampled.shape == (3, 15)


def word_tokenizer(words):
    tokenizer = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = tokenizers.decoders.WordPiece()
    return tokenizer


def test_text_generator_batches_prompts_as_it_runs_them_alone(tmp_path):
    words = ["<pad>", "<unk>", *[f"w{i}" for i in range(48)]]
    model = student("mamba2")
    inference.export_inference_folder(
        tmp_path / "export", CausalLM(), model, tokenizer=word_tokenizer(words)
    )
    lm = inference.load_inference_folder(tmp_path / "export", tmp_path / "save")
    prompts = ["w1 w2 w3 w4 w5", "w7", "w9 w10 w11"]
    batched = lm.generate(prompts, max_new_tokens=6)
    assert batched == [lm.generate(p, max_new_tokens=6) for p in prompts]
    ids = torch.tensor([[words.index(w) for w in prompts[0].split()]])
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert batched[0] == " ".join(words[i] for i in expected[0, 5:])

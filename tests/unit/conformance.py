"""Conformance checks every (source family, mixer that fits it) pair must pass, run by
test_conformance.py over the registries and callable for a family or mixer registered
from outside the package (tests/unit/test_extension.py):

1. padded == alone: teacher and student, each utterance of a right-padded batch gives
   what it gives alone (valid positions; 1e-5 relative to the largest output);
2. save / load: `save_pretrained` -> `conversion.from_pretrained` gives the same outputs;
3. export / reload: `inference.export_inference_folder` -> `load_inference_folder`
   (the checked default path) gives the same outputs from its model module;
4. the attention-init report: where the mixer has an attention init and the family
   gives Q/K/V/O, the report names the initialised parameters and the mixer's own
   `init_note`; elsewhere init "attention" is refused with a ValueError.
"""

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from tiny_models import MIXER_CONFIGS, MODELS, TEXT_VOCAB, VOCAB

from speechbrain_cald import conversion, inference
from speechbrain_cald.masks import lengths_to_mask
from speechbrain_cald.tasks import CTCASR, CausalLM, SequenceClassification

RTOL = 1e-5


def pairs():
    """[(family, mixer)] for every registered family with a tiny model and every
    registered mixer that fits it."""
    return [
        (family, mixer)
        for family in conversion.FAMILIES
        if family in MODELS
        for mixer in conversion.fitting_mixers(conversion.FAMILIES[family])
    ]


def student_of(family, mixer, keep=()):
    """(teacher, student, report) of the family's tiny model with the mixer's tiny config;
    `keep`: layers that keep their attention (a hybrid student)."""
    teacher = MODELS[family][0]()
    config = {
        "mixer": mixer,
        "mixer_config": MIXER_CONFIGS.get(mixer, {}),
        "keep_attention": list(keep),
    }
    student, report = conversion.convert_to_student(teacher, config)
    return teacher, student.eval(), report


def inputs(kind, gen):
    """Two utterances of different lengths: waveforms or token ids."""
    if kind == "speech":
        return [torch.randn(3001, generator=gen) * 0.2, torch.randn(5003, generator=gen)]
    return [torch.randint(4, TEXT_VOCAB, (n,), generator=gen) for n in (7, 12)]


def outputs(model, kind, items):
    """Per item, the model's outputs on its valid positions, from one padded batch."""
    if kind == "speech":
        batch = PaddedBatch([{"id": str(i), "sig": s} for i, s in enumerate(items)])
        with torch.no_grad():
            out = CTCASR(VOCAB).forward(model, batch, sb.Stage.TEST)
        return [out.logits[i, : int(out.mask[i].sum())] for i in range(len(items))]
    ids = torch.zeros(len(items), max(len(t) for t in items), dtype=torch.long)
    for i, t in enumerate(items):
        ids[i, : len(t)] = t
    mask = torch.arange(ids.shape[1])[None] < torch.tensor([len(t) for t in items])[:, None]
    extra = {"use_cache": False} if kind == "lm" else {}  # whole sequences, no generation
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask.long(), **extra).logits
    if kind == "classify":
        return list(logits)
    return [logits[i, : len(t)] for i, t in enumerate(items)]


def assert_close(actual, expected):
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * scale)


def check_padded_equals_alone(family, mixer, keep=()):
    factory, kind = MODELS[family]
    teacher, student, _ = student_of(family, mixer, keep)
    items = inputs(kind, torch.Generator().manual_seed(5))
    for model in (teacher, student):
        for order in (items, items[::-1]):
            padded = outputs(model, kind, order)
            for item, out in zip(order, padded):
                assert_close(out, outputs(model, kind, [item])[0])


def check_save_load(family, mixer, folder, keep=()):
    kind = MODELS[family][1]
    _, student, _ = student_of(family, mixer, keep)
    items = inputs(kind, torch.Generator().manual_seed(6))
    student.save_pretrained(folder)
    reloaded = conversion.from_pretrained(folder).eval()
    for a, b in zip(outputs(reloaded, kind, items), outputs(student, kind, items)):
        assert_close(a, b)


def check_export_reload(family, mixer, folder, keep=()):
    from test_inference import WORDS, word_tokenizer

    kind = MODELS[family][1]
    _, student, _ = student_of(family, mixer, keep)
    items = inputs(kind, torch.Generator().manual_seed(7))
    expected = outputs(student, kind, items)
    task = {"speech": CTCASR(VOCAB), "classify": SequenceClassification(), "lm": CausalLM()}[kind]
    tokenizer = None if kind == "speech" else word_tokenizer(WORDS)
    inference.export_inference_folder(folder, task, student, tokenizer=tokenizer)
    interface = inference.load_inference_folder(str(folder))
    longest = max(len(t) for t in items)
    padded = torch.zeros(len(items), longest, dtype=items[0].dtype)
    for i, t in enumerate(items):
        padded[i, : len(t)] = t
    rel = torch.tensor([len(t) / longest for t in items])
    with torch.no_grad():
        if kind == "speech":
            got = interface.encode_batch(padded, rel)
            for row, logits in enumerate(expected):
                assert_close(got[row, : len(logits)], logits.float().log_softmax(-1))
            return
        got = interface.mods.model(padded, rel)
    valid = lengths_to_mask(rel, longest)
    for row, logits in enumerate(expected):
        assert_close(got[row] if kind == "classify" else got[row, valid[row]], logits)


def check_attention_init_report(family, mixer):
    spec, source = conversion.MIXERS[mixer], conversion.FAMILIES[family]
    teacher = MODELS[family][0]()
    first = source.slot(source.layers(teacher)[0])
    # the mixer's own shapes for this init ({}: its attention_config decides them)
    config = {"mixer": mixer, "mixer_config": {}, "init": "attention"}
    if spec.init_from_attention is None or source.attention_projections(first) is None:
        try:
            conversion.convert_to_student(teacher, config)
        except ValueError:
            return
        raise AssertionError(f"{family} x {mixer}: init 'attention' was not refused")
    report = conversion.convert_to_student(teacher, config)[1]
    assert report.from_attention, f"{family} x {mixer}: nothing initialised from attention"
    if spec.init_note:
        assert spec.init_note in report.notes


def check_hybrid_keeps_its_layers(family, mixer, keep):
    """The kept layers' attention bit-identical to the teacher's, every other layer
    converted, and the kept indices recorded in the student's config (what a reloaded
    student is rebuilt from: `check_save_load`)."""
    source = conversion.FAMILIES[family]
    teacher, student, report = student_of(family, mixer, keep)
    teacher_state = teacher.state_dict()
    for index, (t_layer, s_layer) in enumerate(zip(source.layers(teacher), source.layers(student))):
        t_slot, s_slot = source.slot(t_layer), source.slot(s_layer)
        if index in keep:
            assert type(s_slot) is type(t_slot)
            for name, value in s_slot.state_dict().items():
                assert torch.equal(value, t_slot.state_dict()[name]), (index, name)
        else:
            assert s_slot in conversion.student_slots(student)
    assert conversion.kept_attention(student) == sorted(keep)
    assert f"attention kept in layers {sorted(keep)}" in report.notes
    assert set(report.kept) == set(teacher_state) - set(report.replaced)


def check_generation_with_cache(family, mixer, keep=()):
    """A language model generates the same tokens with its cache (keys/values for kept
    attention layers, recurrent states for converted ones) as without."""
    _, student, _ = student_of(family, mixer, keep)
    prompt = torch.randint(4, TEXT_VOCAB, (2, 5), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0  # a left-padded prompt
    options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        cached = student.generate(prompt, attention_mask=mask, use_cache=True, **options)
        plain = student.generate(prompt, attention_mask=mask, use_cache=False, **options)
    assert torch.equal(cached, plain)


def run_all(family, mixer, folder):
    """Every check for one pair (`folder`: an empty scratch folder)."""
    check_padded_equals_alone(family, mixer)
    check_save_load(family, mixer, folder / "hf")
    check_export_reload(family, mixer, folder / "export")
    check_attention_init_report(family, mixer)

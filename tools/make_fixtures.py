"""Generate tiny fixture corpora in the official layouts of TED-LIUM 3, SLURP and VoxCeleb1.

    python tools/make_fixtures.py --out DIR [--corpus tedlium|slurp|voxceleb1|all]
        [--size tiny|learnable] [--seed 0] [--synth auto|espeak|tones]

writes

    DIR/TEDLIUM_release-3/legacy/{train,dev,test}/{sph,stm}/<talk>.{sph,stm}
    DIR/slurp/dataset/slurp/{train,train_synthetic,devel,test}.jsonl
    DIR/slurp/slurp_real/*.flac, DIR/slurp/slurp_synth/*.flac
    DIR/VoxCeleb1/wav/<spk>/<video>/<utt>.wav, DIR/VoxCeleb1/iden_split.txt

plus `DIR/<corpus root>/FIXTURE.json` (what was generated: counts, labels, texts),
which is not part of the official layouts and is ignored by the prepare scripts.

Speech comes from espeak-ng (several English voices act as speakers) when it is
on PATH (`--synth auto`), otherwise from a procedural vocoder: each word is a
fixed sequence of vowel-like formant patterns (so the words, hence transcripts and
intents, are recoverable from the audio) voiced at a per-speaker pitch and
vocal-tract scale (so speakers are separable). Output is deterministic for a
given seed and synthesiser. `tiny` takes about a second (CI); `learnable` is big
enough for a tiny model to learn each task.
"""

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import time
import zlib

import numpy as np
import soundfile as sf

SR = 16000
# (espeak-ng voice, pitch 0-99) and (f0 Hz, formant scale) for the procedural voices
VOICES = [
    ("en-us", 35, 105.0, 1.00),
    ("en-gb+f3", 70, 205.0, 1.18),
    ("en-gb-scotland", 45, 130.0, 0.95),
    ("en-029+f2", 65, 180.0, 1.12),
    ("en-us+m3", 25, 90.0, 0.90),
    ("en-gb-x-rp+f4", 80, 235.0, 1.22),
]
VOWELS = [
    (730, 1090),
    (270, 2290),
    (300, 870),
    (530, 1840),
    (660, 1720),
    (490, 1350),
    (440, 1020),
    (390, 1990),
    (640, 1190),
    (570, 840),
]


def _rng(*parts):
    return np.random.default_rng(zlib.crc32("|".join(map(str, parts)).encode()))


class Synth:
    """Text -> 16 kHz float32 speech for a speaker index (espeak-ng or procedural)."""

    def __init__(self, mode="auto", seed=0):
        if mode == "auto":
            mode = "espeak" if shutil.which("espeak-ng") else "tones"
        if mode == "espeak" and not shutil.which("espeak-ng"):
            raise SystemExit("--synth espeak: espeak-ng is not on PATH")
        self.mode, self.seed = mode, seed

    def say(self, text, speaker):
        """Speech for `text` (plain lower-case words) in voice `speaker`."""
        return self._espeak(text, speaker) if self.mode == "espeak" else self._tones(text, speaker)

    def _espeak(self, text, speaker):
        voice, pitch, _, _ = VOICES[speaker % len(VOICES)]
        speed = 150 + 10 * (speaker // len(VOICES))
        cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", text]
        out = subprocess.run(cmd, capture_output=True, check=True).stdout
        x, sr = sf.read(io.BytesIO(out), dtype="float32")
        from scipy.signal import resample_poly  # espeak-ng writes 22.05 kHz

        g = np.gcd(sr, SR)
        return (resample_poly(x, SR // g, sr // g) * 0.9).astype(np.float32)

    def _tones(self, text, speaker):
        _, _, f0, scale = VOICES[speaker % len(VOICES)]
        f0 *= 1 + 0.08 * (speaker // len(VOICES))
        rng = _rng(self.seed, text, speaker)
        pieces = [np.zeros(int(0.1 * SR), np.float32)]
        for word in text.split():
            # a word is a fixed sequence of (vowel, pitch contour) units, independent of
            # speaker and seed: 30 units, at least two per word
            wrng = _rng("word", word)
            n_syl = 2 + len(word.strip("'")) // 4
            for v, c in zip(wrng.integers(0, len(VOWELS), n_syl), wrng.integers(0, 3, n_syl)):
                f = f0 * rng.uniform(0.97, 1.03)
                pieces.append(self._vowel(VOWELS[v], f, (0.85, 1.0, 1.2)[c], scale, rng))
            pieces.append(np.zeros(int(0.05 * SR), np.float32))
        pieces.append(np.zeros(int(0.1 * SR), np.float32))
        x = np.concatenate(pieces)
        return (x + 0.003 * rng.standard_normal(len(x))).astype(np.float32)

    @staticmethod
    def _vowel(formants, f0, glide, scale, rng, dur=0.11):
        """A voiced vowel: harmonics of a gliding f0 shaped by formant resonances."""
        n = int(dur * SR)
        f0_t = f0 * np.linspace(1.0, glide, n)
        phase0 = 2 * np.pi * np.cumsum(f0_t) / SR
        k = np.arange(1, int(3800 / (f0 * max(1.0, glide))) + 1)
        harmonics = k * f0
        amp = sum(np.exp(-0.5 * ((harmonics - f * scale) / 90.0) ** 2) for f in formants)
        amp = amp + 0.3 * np.exp(-0.5 * ((harmonics - 2500 * scale) / 150.0) ** 2)
        phase = rng.uniform(0, 2 * np.pi, size=len(k))
        x = (amp[:, None] * np.sin(k[:, None] * phase0 + phase[:, None])).sum(0)
        x *= np.hanning(n)
        return (0.5 * x / (np.abs(x).max() + 1e-8)).astype(np.float32)


# --------------------------------------------------------------------------- TED-LIUM

TED_WORDS = (
    "we can see the world a new idea people think about this good time i want to "
    "show you what data tells us how it works"
).split()
TED_CONTRACTIONS = [("it's", "it 's"), ("we're", "we 're"), ("don't", "don 't")]


def _ted_sentence(rng):
    """(spoken text, STM text) of one random segment; the spoken text is also the
    expected normalised transcript."""
    spoken, stm = [], []
    for _ in range(rng.integers(3, 8)):
        r = rng.random()
        if r < 0.12:
            said, written = TED_CONTRACTIONS[rng.integers(len(TED_CONTRACTIONS))]
        elif r < 0.2:
            said, written = "the", "the(2)"
        else:
            said = written = TED_WORDS[rng.integers(len(TED_WORDS))]
        spoken.append(said)
        stm.append(written)
    if rng.random() < 0.3:
        stm.append("{NOISE}")
    return " ".join(spoken), " ".join(stm)


def make_tedlium(root, size, synth, seed):
    """TED-LIUM 3 legacy layout: SPH talks + STM (with gaps marked ignore_time_...)."""
    talks = {
        "tiny": {"train": 2, "dev": 1, "test": 1},
        "learnable": {"train": 4, "dev": 1, "test": 1},
    }[size]
    n_seg = {"tiny": 3, "learnable": 10}[size]
    meta = {"splits": {}}
    n_train = talks["train"]
    for split, n_talks in talks.items():
        for d in ("sph", "stm"):
            os.makedirs(os.path.join(root, "legacy", split, d), exist_ok=True)
        segs_meta = []
        for k in range(n_talks):
            # dev/test talks reuse the training voices (other texts), so that a tiny model
            # trained on a few voices can be evaluated on them
            speaker = k if split == "train" else (k + (split == "test")) % n_train
            talk = f"Speaker{speaker}{split.capitalize()}_20{10 + k}"
            spk_name = f"Speaker{speaker}_{split}"
            rng = _rng(seed, "ted", split, k)
            audio, lines, t = [np.zeros(int(0.5 * SR), np.float32)], [], 0.5
            for _ in range(n_seg):
                spoken, stm_text = _ted_sentence(rng)
                x = synth.say(spoken, speaker)
                if "{NOISE}" in stm_text:
                    x = np.concatenate([x, 0.05 * rng.standard_normal(int(0.2 * SR))])
                start, end = t, t + len(x) / SR
                gap = 0.3 + 0.2 * rng.random()
                lines.append(f"{talk} 1 {spk_name} {start:.2f} {end:.2f} <o,f0,male> {stm_text}")
                lines.append(
                    f"{talk} 1 inter_segment_gap {end:.2f} {end + gap:.2f} <o,,unknown> "
                    "ignore_time_segment_in_scoring"
                )
                audio += [x.astype(np.float32), np.zeros(int(gap * SR), np.float32)]
                segs_meta.append(
                    {
                        "talk": talk,
                        "start": round(start, 2),
                        "end": round(end, 2),
                        "wrd": spoken,
                        "speaker": spk_name,
                    }
                )
                t = sum(len(a) for a in audio) / SR
            signal = np.concatenate(audio)
            sf.write(
                os.path.join(root, "legacy", split, "sph", f"{talk}.sph"),
                signal,
                SR,
                format="NIST",
                subtype="PCM_16",
            )
            with open(os.path.join(root, "legacy", split, "stm", f"{talk}.stm"), "w") as f:
                f.write("\n".join(lines) + "\n")
        meta["splits"][split] = segs_meta
    return meta


# --------------------------------------------------------------------------- SLURP

INTENTS = [
    (
        "alarm",
        "set",
        ["wake me up at [time : {x}]", "set an alarm for [time : {x}]"],
        ["seven am", "six thirty", "noon"],
    ),
    (
        "weather",
        "query",
        ["what is the weather [date : {x}]", "will it rain [date : {x}]"],
        ["today", "tomorrow", "this weekend"],
    ),
    (
        "play",
        "music",
        ["play some [music_genre : {x}] music", "put on [music_genre : {x}] songs"],
        ["jazz", "rock", "classical"],
    ),
    (
        "iot",
        "hue_lightson",
        [
            "turn on the lights in the [house_place : {x}]",
            "switch the [house_place : {x}] lights on",
        ],
        ["kitchen", "bedroom", "hall"],
    ),
    (
        "calendar",
        "query",
        ["what meetings do i have [date : {x}]", "check my calendar [date : {x}]"],
        ["today", "on monday", "next week"],
    ),
]


def make_slurp(root, size, synth, seed):
    """SLURP layout: four jsonl files + slurp_real/ and slurp_synth/ flac recordings."""
    n_int = {"tiny": 3, "learnable": 5}[size]
    per = {
        "tiny": {"train": 2, "train_synthetic": 1, "devel": 1, "test": 1},
        "learnable": {"train": 20, "train_synthetic": 5, "devel": 5, "test": 5},
    }[size]
    jdir = os.path.join(root, "dataset", "slurp")
    for d in (jdir, os.path.join(root, "slurp_real"), os.path.join(root, "slurp_synth")):
        os.makedirs(d, exist_ok=True)
    meta, slurp_id, stamp = {"splits": {}, "intents": []}, 10000, 1490000000
    for scenario, action, _, _ in INTENTS[:n_int]:
        meta["intents"].append(f"{scenario}_{action}")
    for split, n in per.items():
        synthetic = split == "train_synthetic"
        rng = _rng(seed, "slurp", split)
        records, n_rec = [], 0
        for i in range(n):
            for scenario, action, templates, fillers in INTENTS[:n_int]:
                ann = templates[rng.integers(len(templates))].format(
                    x=fillers[rng.integers(len(fillers))]
                )
                sentence = re.sub(r"\[\s*[^:\]]+:\s*([^\]]*?)\s*\]", r"\1", ann)
                recs = []
                for r in range(1 if synthetic or i % 3 else 2):
                    stamp += 1
                    name = f"audio-{stamp}{'-headset' if r else ''}.flac"
                    if synthetic:
                        name = f"audio--{stamp}.flac"
                    x = synth.say(sentence, int(rng.integers(len(VOICES))))
                    folder = "slurp_synth" if synthetic else "slurp_real"
                    sf.write(
                        os.path.join(root, folder, name), x, SR, format="FLAC", subtype="PCM_16"
                    )
                    recs.append({"file": name, "wer": 0.0, "ent_wer": 0.0, "status": "correct"})
                records.append(
                    {
                        "slurp_id": slurp_id,
                        "sentence": sentence,
                        "sentence_annotation": ann,
                        "intent": f"{scenario}_{action}",
                        "action": action,
                        "scenario": scenario,
                        "tokens": [
                            {"surface": w, "id": j, "lemma": w, "pos": "X"}
                            for j, w in enumerate(sentence.split())
                        ],
                        "recordings": recs,
                    }
                )
                slurp_id += 1
                n_rec += len(recs)
        with open(os.path.join(jdir, f"{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        meta["splits"][split] = {"entries": len(records), "recordings": n_rec}
    return meta


# --------------------------------------------------------------------------- VoxCeleb1


def make_voxceleb1(root, size, synth, seed):
    """VoxCeleb1 layout: wav/<spk>/<video>/<utt>.wav + iden_split.txt (1/2/3)."""
    # learnable: 32 train / 8 dev / 8 test utterances per speaker; with 16 train
    # utterances of random words a tiny model memorises their content instead of
    # the voice (tests/recipes/test_recipes.py, LEARNABLE_MODEL)
    n_spk, n_vid, n_utt = {"tiny": (3, 2, 2), "learnable": (5, 4, 12)}[size]
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
    lines, counts = [], {"1": 0, "2": 0, "3": 0}
    for s in range(n_spk):
        spk = f"id1{s + 1:04d}"
        rng = _rng(seed, "vox", spk)
        utts = []
        for _ in range(n_vid):
            video = "".join(letters[i] for i in rng.integers(0, len(letters), size=11))
            for u in range(n_utt):
                text = " ".join(TED_WORDS[i] for i in rng.integers(0, len(TED_WORDS), size=5))
                rel = f"{spk}/{video}/{u + 1:05d}.wav"
                path = os.path.join(root, "wav", rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                sf.write(path, synth.say(text, s), SR, subtype="PCM_16")
                utts.append(rel)
        n_eval = max(1, len(utts) // 6)
        for j, rel in enumerate(utts):
            split = "3" if j >= len(utts) - n_eval else "2" if j >= len(utts) - 2 * n_eval else "1"
            counts[split] += 1
            lines.append(f"{split} {rel}")
    with open(os.path.join(root, "iden_split.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return {
        "speakers": n_spk,
        "splits": {"train": counts["1"], "dev": counts["2"], "test": counts["3"]},
    }


CORPORA = {
    "tedlium": ("TEDLIUM_release-3", make_tedlium),
    "slurp": ("slurp", make_slurp),
    "voxceleb1": ("VoxCeleb1", make_voxceleb1),
}


def make_fixtures(out, corpus="all", size="tiny", seed=0, synth="auto"):
    """Generate the fixture corpora under `out`; return `{corpus: root}`."""
    engine = Synth(synth, seed)
    roots = {}
    for name in CORPORA if corpus == "all" else [corpus]:
        folder, maker = CORPORA[name]
        root = os.path.join(out, folder)
        if os.path.isdir(root):
            shutil.rmtree(root)
        os.makedirs(root)
        meta = maker(root, size, engine, seed)
        meta.update({"corpus": name, "size": size, "seed": seed, "synth": engine.mode})
        with open(os.path.join(root, "FIXTURE.json"), "w") as f:
            json.dump(meta, f, indent=1)
        roots[name] = root
    return roots


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--corpus", default="all", choices=["all", *CORPORA])
    parser.add_argument("--size", default="tiny", choices=["tiny", "learnable"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synth", default="auto", choices=["auto", "espeak", "tones"])
    args = parser.parse_args(argv)
    t0 = time.time()
    roots = make_fixtures(args.out, args.corpus, args.size, args.seed, args.synth)
    for name, root in roots.items():
        print(f"{name}: {root}")
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()

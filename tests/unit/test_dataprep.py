"""Data preparation of TED-LIUM 3, SLURP and VoxCeleb1 on tiny generated fixtures.

The fixtures come from `tools/make_fixtures.py` (procedural voices, so the test does
not depend on espeak-ng); the recipe prepare scripts are loaded from their files,
as a recipe's train.py would import them from its own folder.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import soundfile as sf

from speechbrain_cald.dataprep import (
    DataPrepError,
    read_audio,
    read_csv_manifest,
    write_audio,
    write_csv_manifest,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAKE_FIXTURES = os.path.join(REPO, "tools", "make_fixtures.py")
ROOTS = {"tedlium": "TEDLIUM_release-3", "slurp": "slurp", "voxceleb1": "VoxCeleb1"}


def _load(rel):
    """Import a recipe's prepare script from its file (recipes are not packages)."""
    path = os.path.join(REPO, "recipes", rel)
    name = "_prep_" + os.path.basename(path)[:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ted = _load("TEDLIUM/ASR/tedlium_prepare.py")
slurp = _load("SLURP/IC/slurp_prepare.py")
vox = _load("VoxCeleb1/SID/voxceleb1_prepare.py")
PREPARE = {
    "tedlium": ted.prepare_tedlium,
    "slurp": slurp.prepare_slurp,
    "voxceleb1": vox.prepare_voxceleb1,
}


def _make(out, *args):
    cmd = [sys.executable, MAKE_FIXTURES, "--out", str(out), *args]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """The three tiny corpora, generated once (read-only for the tests)."""
    out = tmp_path_factory.mktemp("fixtures")
    _make(out, "--corpus", "all", "--size", "tiny", "--synth", "tones")
    return out


@pytest.fixture
def corpus(fixtures, tmp_path):
    """A private copy of one fixture corpus, for tests that damage it."""

    def copy(name):
        dst = tmp_path / "data" / ROOTS[name]
        shutil.copytree(fixtures / ROOTS[name], dst)
        return dst

    return copy


def _meta(root):
    return json.loads((root / "FIXTURE.json").read_text())


# --------------------------------------------------------------------------- manifests


def test_tedlium_manifests(fixtures, tmp_path):
    root = fixtures / ROOTS["tedlium"]
    paths = ted.prepare_tedlium(str(root), str(tmp_path / "ted"))
    meta = _meta(root)
    assert set(paths) == {"train", "dev", "test"}
    for split, path in paths.items():
        rows = read_csv_manifest(path)
        expected = meta["splits"][split]
        assert len(rows) == len(expected)
        assert list(rows[0]) == ["ID", "duration", "wav", "spk_id", "wrd"]
        for row, seg in zip(rows, expected):
            assert row["wrd"] == seg["wrd"] and re.fullmatch(r"[a-z' ]+", row["wrd"])
            assert row["spk_id"] == seg["speaker"]
            info = sf.info(row["wav"])
            assert info.samplerate == 16000
            assert float(row["duration"]) == pytest.approx(info.frames / 16000, abs=1e-4)
            assert float(row["duration"]) == pytest.approx(seg["end"] - seg["start"], abs=2e-3)


def test_normalize_text_follows_tedlium_recipes():
    words = "it 's a {NOISE} the(2) <unk> Hello-World don 't [laughter] (AlGore_2009)".split()
    assert ted.normalize_text(words) == ("it's a the hello world don't", "")


def test_normalize_text_transliterates_and_reports_what_it_drops():
    words = "Café NAÏVE Straße œuvre 東京 don't".split()
    assert ted.normalize_text(words) == ("cafe naive strasse oeuvre don't", "東京")


def test_tedlium_resamples_talks_to_16k(corpus, tmp_path):
    root = corpus("tedlium")
    (sph,) = (root / "legacy" / "dev" / "sph").glob("*.sph")
    signal, sr = sf.read(sph, dtype="float32")
    write_audio(str(sph), signal[::2], sr // 2)  # the same talk at 8 kHz
    rows = read_csv_manifest(ted.prepare_tedlium(str(root), str(tmp_path / "ted"))["dev"])
    for row, seg in zip(rows, _meta(root)["splits"]["dev"]):
        assert sf.info(row["wav"]).samplerate == 16000
        assert float(row["duration"]) == pytest.approx(seg["end"] - seg["start"], abs=2e-3)


def test_slurp_manifests(fixtures, tmp_path):
    root = fixtures / ROOTS["slurp"]
    paths = slurp.prepare_slurp(str(root), str(tmp_path / "slurp"))
    meta = _meta(root)["splits"]
    cols = ["ID", "duration", "wav", "semantics", "scenario", "action", "intent", "transcript"]
    expected = {
        "train": meta["train"]["recordings"] + meta["train_synthetic"]["recordings"],
        "dev": meta["devel"]["recordings"],
        "test": meta["test"]["recordings"],
    }
    for split, path in paths.items():
        rows = read_csv_manifest(path)
        assert len(rows) == expected[split] and list(rows[0]) == cols
        for row in rows:
            assert row["intent"] == f"{row['scenario']}_{row['action']}"
            assert json.loads(row["semantics"])["scenario"] == row["scenario"]
            assert float(row["duration"]) == pytest.approx(sf.info(row["wav"]).duration, abs=1e-4)
    train = read_csv_manifest(paths["train"])
    synth = [r for r in train if "/slurp_synth/" in r["wav"]]
    assert len(synth) == meta["train_synthetic"]["recordings"] > 0
    assert {r["intent"] for r in train} == set(_meta(root)["intents"])
    alarm = next(r for r in train if r["intent"] == "alarm_set")
    assert json.loads(alarm["semantics"])["entities"][0]["type"] == "time"


@pytest.mark.parametrize("name", ["slurp", "voxceleb1"])
def test_a_recording_at_another_rate_is_read_resampled(corpus, tmp_path, name):
    """Before: one file at another sample rate stopped the preparation, even under
    bad_data: skip; the one audio path resamples it (read_audio), so it is used."""
    root = corpus(name)
    wav = sorted(p for p in root.rglob("*") if p.suffix in (".wav", ".flac"))[0]
    signal, sr = sf.read(wav)
    sf.write(wav, signal[::2], sr // 2, format=sf.info(wav).format)  # same seconds, half rate
    paths = PREPARE[name](str(root), str(tmp_path / name))
    rows = [r for p in paths.values() for r in read_csv_manifest(p) if r["wav"] == str(wav)]
    assert len(rows) == 1
    assert float(rows[0]["duration"]) == pytest.approx(sf.info(wav).duration, abs=1e-4)
    assert read_audio(str(wav), 16000).shape[0] == pytest.approx(len(signal), abs=2)


@pytest.mark.parametrize(
    "moves",
    [
        # the SLURP repository with its download script's audio/ folder
        {"slurp_real": "audio/slurp_real", "slurp_synth": "audio/slurp_synth"},
        # the repository cloned into the data folder, audio beside it (the reference's)
        {"dataset": "slurp/dataset"},
    ],
)
def test_slurp_official_layouts_give_the_same_manifests(corpus, fixtures, tmp_path, moves):
    flat = {
        split: read_csv_manifest(path)
        for split, path in slurp.prepare_slurp(
            str(fixtures / ROOTS["slurp"]), str(tmp_path / "flat")
        ).items()
    }
    root = corpus("slurp")
    for old, new in moves.items():
        (root / new).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(root / old, root / new)
    paths = slurp.prepare_slurp(str(root), str(tmp_path / "moved"))
    for split, path in paths.items():
        rows = read_csv_manifest(path)
        assert [r["ID"] for r in rows] == [r["ID"] for r in flat[split]]
        assert all(os.path.isfile(r["wav"]) and str(root) in r["wav"] for r in rows)
        for new in moves.values():
            if "audio" in new and split == "dev":
                assert all(os.sep + "audio" + os.sep in r["wav"] for r in rows)


def test_slurp_recording_outside_the_audio_folder_is_an_error(corpus, tmp_path):
    root = corpus("slurp")
    path = root / "dataset" / "slurp" / "devel.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    record["recordings"][0]["file"] = "../../etc/passwd"
    path.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    with pytest.raises(
        DataPrepError, match=r"devel\.jsonl:1: recording file '\.\./\.\./etc/passwd'"
    ):
        slurp.prepare_slurp(str(root), str(tmp_path / "out"))


def test_voxceleb1_manifests(fixtures, tmp_path):
    root = fixtures / ROOTS["voxceleb1"]
    paths = vox.prepare_voxceleb1(str(root), str(tmp_path / "vox"))
    meta = _meta(root)
    for split, path in paths.items():
        rows = read_csv_manifest(path)
        assert len(rows) == meta["splits"][split] and list(rows[0]) == [
            "ID",
            "duration",
            "wav",
            "spk_id",
        ]
        for row in rows:
            assert row["wav"].split(os.sep)[-3] == row["spk_id"]
            assert float(row["duration"]) == pytest.approx(sf.info(row["wav"]).duration, abs=1e-4)
    assert len({r["spk_id"] for r in read_csv_manifest(paths["train"])}) == meta["speakers"]


# --------------------------------------------------------------------------- skipping


@pytest.mark.parametrize("name", ["tedlium", "voxceleb1"])
def test_skip_if_complete_and_redo_if_incomplete(fixtures, tmp_path, name):
    root, save = str(fixtures / ROOTS[name]), str(tmp_path / name)
    paths = PREPARE[name](root, save)
    stamps = {p: os.stat(p).st_mtime_ns for p in paths.values()}
    assert PREPARE[name](root, save) == paths
    assert {p: os.stat(p).st_mtime_ns for p in paths.values()} == stamps  # nothing rewritten

    train = paths["train"]
    n_rows = len(read_csv_manifest(train))
    with open(train, encoding="utf-8") as f:
        lines = f.readlines()
    with open(train, "w", encoding="utf-8") as f:
        f.writelines(lines[:-1])  # an interrupted write
    PREPARE[name](root, save)
    assert len(read_csv_manifest(train)) == n_rows

    assert PREPARE[name](root, save, skip_prep=True) == {}


def test_changed_options_redo_the_preparation(fixtures, tmp_path):
    root, save = str(fixtures / ROOTS["tedlium"]), str(tmp_path / "ted")
    n = len(read_csv_manifest(ted.prepare_tedlium(root, save)["train"]))
    rows = read_csv_manifest(ted.prepare_tedlium(root, save, min_duration=2.0)["train"])
    assert 0 < len(rows) < n and all(float(r["duration"]) >= 2.0 for r in rows)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "name, remove, match",
    [
        ("tedlium", "legacy/dev/stm", r"legacy/dev/stm"),
        ("slurp", "slurp_synth", r"slurp_synth"),
        ("slurp", "dataset/slurp/devel.jsonl", r"devel\.jsonl"),
        ("voxceleb1", "iden_split.txt", r"iden_split\.txt"),
        ("voxceleb1", "wav", r"VoxCeleb1/wav"),
    ],
)
def test_missing_folder_names_what_is_missing(corpus, tmp_path, name, remove, match):
    root = corpus(name)
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DataPrepError, match=match) as err:
        PREPARE[name](str(root), str(tmp_path / "out"))
    assert "Expected layout" in str(err.value)


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataPrepError, match="not found: .*nowhere"):
        vox.prepare_voxceleb1(str(tmp_path / "nowhere"), str(tmp_path / "out"))


@pytest.mark.parametrize(
    "name, rel",
    [
        ("tedlium", "legacy/train/sph/*.sph"),
        ("slurp", "slurp_synth/*.flac"),
        ("voxceleb1", None),
    ],
)
def test_corrupt_audio_names_the_file(corpus, tmp_path, name, rel):
    root = corpus(name)
    if rel is None:
        rel = "wav/" + (root / "iden_split.txt").read_text().split("\n")[3].split()[1]
    else:
        rel = str(sorted(root.glob(rel))[-1].relative_to(root))
    (root / rel).write_bytes(b"this is not audio" * 10)
    with pytest.raises(DataPrepError, match=re.escape(os.path.basename(rel)) + ".*unreadable"):
        PREPARE[name](str(root), str(tmp_path / "out"))


def test_empty_audio_names_the_file(corpus, tmp_path):
    root = corpus("voxceleb1")
    rel = (root / "iden_split.txt").read_text().split()[1]
    sf.write(root / "wav" / rel, [], 16000)
    with pytest.raises(DataPrepError, match=re.escape(rel) + ".*empty"):
        vox.prepare_voxceleb1(str(root), str(tmp_path / "out"))


def _replace_line(path, number, text):
    lines = path.read_text().split("\n")
    lines[number - 1] = text
    path.write_text("\n".join(lines))


@pytest.mark.parametrize(
    "name, rel, bad, match",
    [
        (
            "tedlium",
            "legacy/train/stm/Speaker0Train_2010.stm",
            "Speaker0Train_2010 1 Speaker0_train 3.1 <o,f0,male>",
            r"Speaker0Train_2010\.stm:3: ",
        ),
        (
            "tedlium",
            "legacy/test/stm/*.stm",
            "Speaker1Test_2010 1 S zero 2.0 <o,f0,male> hello",
            r"Test_2010\.stm:3: .*times",
        ),
        (
            "slurp",
            "dataset/slurp/train_synthetic.jsonl",
            '{"slurp_id": 1, "sentence": ',
            r"train_synthetic\.jsonl:2: malformed JSON",
        ),
        (
            "slurp",
            "dataset/slurp/test.jsonl",
            '{"slurp_id": 1, "sentence": "hi"}',
            r"test\.jsonl:3: .*scenario",
        ),
        ("voxceleb1", "iden_split.txt", "4 id10001/x/00001.wav", r"iden_split\.txt:2: malformed"),
        (
            "voxceleb1",
            "iden_split.txt",
            "1 id10001/nope/00009.wav",
            r"iden_split\.txt:5: listed file not found: .*nope/00009\.wav",
        ),
    ],
)
def test_malformed_line_names_file_and_line(corpus, tmp_path, name, rel, bad, match):
    root = corpus(name)
    number = int(re.search(r":(\d+):", match).group(1))
    (path,) = root.glob(rel)
    _replace_line(path, number, bad)
    with pytest.raises(DataPrepError, match=match):
        PREPARE[name](str(root), str(tmp_path / "out"))


def test_manifest_writer_rejects_duplicate_ids(tmp_path):
    rows = [{"ID": "a", "duration": 1.0, "wav": "x.wav"}] * 2
    with pytest.raises(DataPrepError, match="duplicate ID 'a'"):
        write_csv_manifest(str(tmp_path / "m.csv"), rows)
    assert not os.path.exists(tmp_path / "m.csv")
    assert issubclass(DataPrepError, ValueError)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not on PATH")
def test_espeak_fixture_prepares(tmp_path):
    _make(tmp_path, "--corpus", "voxceleb1", "--synth", "espeak")
    assert _meta(tmp_path / "VoxCeleb1")["synth"] == "espeak"
    paths = vox.prepare_voxceleb1(str(tmp_path / "VoxCeleb1"), str(tmp_path / "out"))
    assert all(float(r["duration"]) > 0.5 for r in read_csv_manifest(paths["train"]))


def test_tedlium_segments_past_the_audio_or_without_words_are_counted_skips(
    corpus, tmp_path, caplog
):
    """A talk cut short (an STM segment past its audio's end) and a segment left with no
    words are not used, each named in the log with the file and line."""
    root = corpus("tedlium")
    (stm,) = (root / "legacy" / "dev" / "stm").glob("*.stm")
    (sph,) = (root / "legacy" / "dev" / "sph").glob("*.sph")
    signal, sr = sf.read(sph)
    lines = stm.read_text().splitlines()
    scored = [
        i
        for i, line in enumerate(lines)
        if not line.startswith(";;") and ted.IGNORE not in line and "inter_segment_gap" not in line
    ]
    last = lines[scored[-1]].split()
    cut = (float(last[3]) + float(last[4])) / 2  # the last segment now ends past the audio
    sf.write(sph, signal[: int(cut * sr)], sr, format="NIST", subtype="PCM_16")
    first = lines[scored[0]].split()
    lines[scored[0]] = " ".join([*first[:6], "東京", "..."])
    stm.write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        rows = read_csv_manifest(ted.prepare_tedlium(str(root), str(tmp_path / "ted"))["dev"])
    assert len(rows) == len(scored) - 2
    assert f"{stm} line {scored[-1] + 1}: segment" in caplog.text and "past the end" in caplog.text
    assert "letters '東京' dropped" in caplog.text
    assert "1 segment(s) with no words left after normalisation and 1 past the end" in caplog.text

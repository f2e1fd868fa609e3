"""Data preparation for SLURP intent classification.

Reads the SLURP repository (https://github.com/pswietojanski/slurp) with its audio
as its download script leaves it (`scripts/download_audio.sh`: about 6 GB of
16 kHz FLAC), or the same parts side by side:

    <data_folder>/dataset/slurp/{train,train_synthetic,devel,test}.jsonl
      (or <data_folder>/slurp/dataset/slurp/...: the repository cloned into it)
    <data_folder>/audio/slurp_real/<file>   (recordings of train, devel, test)
    <data_folder>/audio/slurp_synth/<file>  (recordings of train_synthetic)
      (or <data_folder>/slurp_real/, <data_folder>/slurp_synth/)

and writes one sample per recording: `train.csv` (train + train_synthetic),
`dev.csv` (devel) and `test.csv`, with the columns
`ID,duration,wav,semantics,scenario,action,intent,transcript`. `semantics` is a
JSON object (scenario, action, entities) as in SpeechBrain's SLURP recipe.

Example
-------
>>> from speechbrain.utils.distributed import run_on_main
>>> run_on_main(prepare_slurp, kwargs={"data_folder": "slurp",
...     "save_folder": "results/slurp"})  # doctest: +SKIP
"""

import json
import logging
import os
import re

from speechbrain_cald.dataprep import audio_info, file_error, iter_lines, prepare_splits

logger = logging.getLogger(__name__)

# manifest split -> [(jsonl name, audio folder), ...]
SPLITS = {
    "train": [("train", "slurp_real"), ("train_synthetic", "slurp_synth")],
    "dev": [("devel", "slurp_real")],
    "test": [("test", "slurp_real")],
}
# Where each part may be, first match wins: the repository's own layout (audio from
# its download script), the repository cloned into the data folder, everything flat.
JSONL_DIRS = (os.path.join("dataset", "slurp"), os.path.join("slurp", "dataset", "slurp"))
AUDIO_PARENTS = ("audio", "")
LAYOUT = """  <data_folder>/dataset/slurp/{train,train_synthetic,devel,test}.jsonl
      (or <data_folder>/slurp/dataset/slurp/*.jsonl)
  <data_folder>/audio/slurp_real/   (audio of train, devel, test; or <data_folder>/slurp_real/)
  <data_folder>/audio/slurp_synth/  (audio of train_synthetic; or <data_folder>/slurp_synth/)"""
REQUIRED_KEYS = ("slurp_id", "sentence", "scenario", "action", "recordings")
_ENTITY = re.compile(r"\[\s*([^:\]]+?)\s*:\s*([^\]]*?)\s*\]")


def parse_entities(annotation):
    """Entities of a SLURP `sentence_annotation` (`[type : filler]` spans)."""
    return [{"type": t, "filler": f} for t, f in _ENTITY.findall(annotation or "")]


def read_jsonl(path, audio_dir):
    """Manifest rows (one per recording) of one SLURP jsonl file.

    Raises `DataPrepError` naming the file and line for a malformed line, and
    naming the audio file when a recording is missing or unreadable.
    """
    rows = []
    for number, line in iter_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise file_error(path, f"malformed JSON ({err.msg})", number) from None
        if not isinstance(obj, dict) or any(k not in obj for k in REQUIRED_KEYS):
            missing = [k for k in REQUIRED_KEYS if not isinstance(obj, dict) or k not in obj]
            raise file_error(path, f"SLURP record lacks keys {missing}", number)
        recordings = obj["recordings"]
        if not isinstance(recordings, list) or not all(
            isinstance(r, dict) and "file" in r for r in recordings
        ):
            raise file_error(path, "'recordings' must be a list of {'file': ...}", number)
        scenario, action = str(obj["scenario"]), str(obj["action"])
        intent = str(obj.get("intent") or f"{scenario}_{action}")
        semantics = json.dumps(
            {
                "scenario": scenario,
                "action": action,
                "entities": parse_entities(obj.get("sentence_annotation")),
            }
        )
        for rec in recordings:
            if os.path.basename(rec["file"]) != rec["file"] or rec["file"] in ("", ".", ".."):
                raise file_error(
                    path,
                    f"recording file {rec['file']!r} is not a file name in {audio_dir}",
                    number,
                )
            wav = os.path.join(audio_dir, rec["file"])
            duration, _, _ = audio_info(wav)  # any rate: the audio pipeline resamples
            rows.append(
                {
                    "ID": f"{obj['slurp_id']}_{os.path.splitext(rec['file'])[0]}",
                    "duration": duration,
                    "wav": wav,
                    "semantics": semantics,
                    "scenario": scenario,
                    "action": action,
                    "intent": intent,
                    "transcript": obj["sentence"],
                }
            )
    return rows


def find_layout(data_folder):
    """(jsonl folder, {audio folder name: path}) of a SLURP data folder, relative to it:
    the first of `JSONL_DIRS` holding every jsonl, and for each audio folder the first
    of `AUDIO_PARENTS` holding it (None where nothing matches)."""
    names = [f"{j}.jsonl" for sources in SPLITS.values() for j, _ in sources]
    jsonl_dir = next(
        (
            d
            for d in JSONL_DIRS
            if all(os.path.isfile(os.path.join(data_folder, d, n)) for n in names)
        ),
        None,
    )
    audio = {}
    for _, folder in {s for sources in SPLITS.values() for s in sources}:
        found = [os.path.join(p, folder) for p in AUDIO_PARENTS]
        audio[folder] = next(
            (f for f in found if os.path.isdir(os.path.join(data_folder, f))), None
        )
    return jsonl_dir, audio


def read_splits(data_folder):
    """`{split: rows}` of the corpus (the `prepare_splits` build step)."""
    jsonl_dir, audio = find_layout(data_folder)
    return {
        split: [
            row
            for jsonl, folder in sources
            for row in read_jsonl(
                os.path.join(data_folder, jsonl_dir, f"{jsonl}.jsonl"),
                os.path.join(data_folder, audio[folder]),
            )
        ]
        for split, sources in SPLITS.items()
    }


def prepare_slurp(data_folder, save_folder, skip_prep=False, sample_rate=16000):
    """Prepare SLURP manifests `train.csv` (real + synthetic), `dev.csv`, `test.csv`
    in `save_folder` from the SLURP root `data_folder` (see the module docstring for
    the layouts read); recordings at any rate are resampled to `sample_rate` when read
    (recorded only here). Nothing is done with `skip_prep`. Returns `{split: manifest
    path}`.
    """
    jsonl_dir, audio = find_layout(data_folder)
    names = [f"{j}.jsonl" for v in SPLITS.values() for j, _ in v]
    required = [os.path.join(jsonl_dir or JSONL_DIRS[0], n) for n in names]
    required += [path or name for name, path in audio.items()]
    return prepare_splits(
        "SLURP", data_folder, save_folder, read_splits, required, LAYOUT, skip_prep, sample_rate
    )

"""Data preparation for SLURP intent classification.

Reads the official layout (the SLURP repository with its audio extracted in it)

    <data_folder>/dataset/slurp/{train,train_synthetic,devel,test}.jsonl
    <data_folder>/slurp_real/<file>     (recordings of train, devel, test)
    <data_folder>/slurp_synth/<file>    (recordings of train_synthetic)

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
JSONL_DIR = os.path.join("dataset", "slurp")
LAYOUT = """  <data_folder>/dataset/slurp/{train,train_synthetic,devel,test}.jsonl
  <data_folder>/slurp_real/   (audio of train, devel, test)
  <data_folder>/slurp_synth/  (audio of train_synthetic)"""
REQUIRED_KEYS = ("slurp_id", "sentence", "scenario", "action", "recordings")
_ENTITY = re.compile(r"\[\s*([^:\]]+?)\s*:\s*([^\]]*?)\s*\]")


def parse_entities(annotation):
    """Entities of a SLURP `sentence_annotation` (`[type : filler]` spans)."""
    return [{"type": t, "filler": f} for t, f in _ENTITY.findall(annotation or "")]


def read_jsonl(path, audio_dir, sample_rate):
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
            wav = os.path.join(audio_dir, rec["file"])
            duration, _, _ = audio_info(wav, expected_sr=sample_rate)
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


def read_splits(data_folder, sample_rate):
    """`{split: rows}` of the corpus (the `prepare_splits` build step)."""
    return {
        split: [
            row
            for jsonl, audio in sources
            for row in read_jsonl(
                os.path.join(data_folder, JSONL_DIR, f"{jsonl}.jsonl"),
                os.path.join(data_folder, audio),
                sample_rate,
            )
        ]
        for split, sources in SPLITS.items()
    }


def prepare_slurp(data_folder, save_folder, skip_prep=False, sample_rate=16000):
    """Prepare SLURP manifests `train.csv` (real + synthetic), `dev.csv`, `test.csv`
    in `save_folder` from the SLURP root `data_folder` (holding `dataset/slurp/`,
    `slurp_real/`, `slurp_synth/`); every recording must be at `sample_rate`.
    Nothing is done with `skip_prep`. Returns `{split: manifest path}`.
    """
    jsonls = [os.path.join(JSONL_DIR, f"{j}.jsonl") for v in SPLITS.values() for j, _ in v]
    required = jsonls + ["slurp_real", "slurp_synth"]
    return prepare_splits(
        "SLURP", data_folder, save_folder, read_splits, required, LAYOUT, skip_prep, sample_rate
    )

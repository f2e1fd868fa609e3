"""A recipe's YAML: merged into its `base_hparams` (`merge_base_hparams`), loaded with the
command-line overrides (`load_experiment`, misspelled or repeated keys one line), and
written into the experiment folder (`write_experiment`)."""

import ast
import difflib
import io
import os
import re
import sys

import ruamel.yaml
import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from ruamel.yaml.constructor import DuplicateKeyError

BASE_KEY = "base_hparams"  # a corpus YAML's base recipe YAML

MERGED_HPARAMS_FILE = "hparams_merged.yaml"  # a based YAML merged, before overrides


def merge_base_hparams(hparams_file):
    """YAML text of `hparams_file` merged into the base YAML it names; None if none.

    A new corpus reuses a recipe's YAML instead of copying it: its YAML names that
    file under `base_hparams` (a path relative to itself) and lists only what differs
    (`data_folder` comment, `output_root`, `num_classes`, `label_columns`, ...). Each
    of its top-level keys replaces the base's value whole, so a mapping such as
    `num_classes: {intent: 10}` drops the base's heads (command-line overrides, by
    contrast, merge mappings key by key); keys the base lacks are added. The base may
    itself name a base. Tags (`!ref`, `!new:` ...) are kept, so the base's references
    see the corpus values when the merged text is loaded.
    """
    yaml = ruamel.yaml.YAML()
    with open(hparams_file, encoding="utf-8") as f:
        tree = yaml.load(f)
    if not isinstance(tree, dict) or BASE_KEY not in tree:
        return None
    base_file = os.path.join(os.path.dirname(os.path.abspath(hparams_file)), tree.pop(BASE_KEY))
    base_text = merge_base_hparams(base_file)
    if base_text is None:
        with open(base_file, encoding="utf-8") as f:
            base_text = f.read()
    merged = yaml.load(base_text)
    merged.update(tree)
    stream = io.StringIO()
    yaml.dump(merged, stream)
    return stream.getvalue()


def load_experiment(argv=None):
    """Parse `train.py hparams.yaml [--key value ...]` and load the YAML (merged into its
    base, see `merge_base_hparams`) with the overrides; nothing is written. Returns
    (hparams, run_opts, what `write_experiment` needs)."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv or sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)  # torchrun: one process per device
    merged = merge_base_hparams(hparams_file)
    with open(hparams_file, encoding="utf-8") as f:
        try:
            hparams = load_hyperpyyaml(f if merged is None else merged, overrides)
        except (KeyError, DuplicateKeyError) as err:
            raise override_error(err, hparams_file) from None
    return hparams, run_opts, (hparams_file, merged, overrides)


def override_error(err, hparams_file):
    """A one-line ValueError for an unknown (misspelled) or repeated `--key` override;
    any other error as it is."""
    if isinstance(err, DuplicateKeyError):
        key = re.search(r'duplicate key "([^"]+)"', str(err))
        return ValueError(f"--{key.group(1) if key else '?'} is given more than once")
    unknown = re.match(r"Override '([^']+)' not found in: (\[.*\])", str(err.args[0]))
    if unknown is None:
        return err
    key, keys = unknown.group(1), ast.literal_eval(unknown.group(2))
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f"; did you mean {', '.join('--' + k for k in close)}?" if close else ""
    return ValueError(f"--{key}: no such key in {hparams_file}{hint}")


def write_experiment(hparams, run_opts, record):
    """The experiment folder: the resolved YAML (`hyperparams.yaml`, and the merged text
    of a based YAML), the overrides and the log (SpeechBrain's experiment directory).
    Call it holding the folder's lock (`output_folder_lock`): a refused second run must
    not overwrite the first run's records."""
    hparams_file, merged, overrides = record
    if merged is not None:  # hyperparams.yaml is resolved from the merged text
        hparams_file = os.path.join(hparams["output_folder"], MERGED_HPARAMS_FILE)
        if sb.utils.distributed.if_main_process():
            os.makedirs(hparams["output_folder"], exist_ok=True)
            with open(hparams_file, "w", encoding="utf-8") as f:
                f.write(merged)
        sb.utils.distributed.ddp_barrier()
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
        log_config=run_opts.get("log_config")
        or hparams.get("log_config")
        or sb.core.DEFAULT_LOG_CONFIG,
    )

#!/usr/bin/env python3
"""Zero-shot evaluation of an exported LM (student or teacher) with
lm-evaluation-harness (the `lm` extra: `pip install "lm-eval[hf]"`), as in the reference.

    python lm_eval_student.py --model results/pile_pythia_mamba/target/1986/best_model \
        --tokenizer EleutherAI/pythia-160m [--tasks lambada_openai,piqa,...] \
        [--include_path DIR] [--out FILE]

The model folder is read with `CausalLM().load` (a converted student is rebuilt
from its config) and handed to lm_eval as an `HFLM` built on the model object, with
the teacher's tokenizer (hub id or local folder: the student keeps the teacher's
vocabulary). `--include_path` adds a folder of task YAMLs (local tasks, e.g. on a
local jsonl dataset) to the harness' registry. Prints and writes the accuracy per
task and their mean.
"""

import argparse
import json

import transformers

from speechbrain_cald.tasks import CausalLM

REFERENCE_TASKS = "lambada_openai,piqa,winogrande,wsc273,arc_easy,arc_challenge,sciq,logiqa"


def as_lm_eval_model(folder, tokenizer, batch_size=8, device="cpu"):
    """The model in `folder` as an lm_eval `HFLM` (needs lm-evaluation-harness).

    `tokenizer` is a hub id or a local tokenizer folder (the teacher's).
    """
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        raise ImportError(
            'zero-shot evaluation needs lm-evaluation-harness: pip install "lm-eval[hf]"'
        ) from e
    model, _ = CausalLM().load(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer)
    return HFLM(pretrained=model.to(device).eval(), tokenizer=tokenizer, batch_size=batch_size)


def evaluate(lm, tasks, include_path=None):
    """{task: accuracy} (acc, or acc,none in newer harness versions) and their mean.

    `tasks` is a comma-separated list of task names; `include_path` a folder of extra
    task YAMLs registered beside the harness' own (None: the built-in tasks only).
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model=lm, tasks=tasks.split(","), task_manager=TaskManager(include_path=include_path)
    )["results"]
    accs = {
        task: next(v for k, v in stats.items() if k.split(",")[0] == "acc")
        for task, stats in results.items()
    }
    return {**accs, "mean": sum(accs.values()) / len(accs)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="exported model folder")
    parser.add_argument("--tokenizer", required=True, help="the teacher's hub id / folder")
    parser.add_argument("--tasks", default=REFERENCE_TASKS)
    parser.add_argument("--include_path", default=None, help="folder of extra task YAMLs")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="JSON file for the accuracies")
    args = parser.parse_args(argv)
    lm = as_lm_eval_model(args.model, args.tokenizer, args.batch_size, args.device)
    accs = evaluate(lm, args.tasks, args.include_path)
    print(json.dumps(accs, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(accs, f, indent=2)


if __name__ == "__main__":
    main()

"""CPU deployment options side by side with eager fp32, for exported inference folders.

Not a test. For each folder (e.g. a std teacher and a CALD student of the FSDD ASR
benchmark) and each length (batch 1: random audio of --seconds through a speech
folder's encoder path, or random token ids of --tokens through a text folder's model):

- eager fp32 (the interfaces' default);
- int8: `inference.quantize_int8` (dynamic int8 linear layers; `int8=True`);
- compiled: `torch.compile` of the HF model at this one input shape (what a
  length-bucketed deployment would run per bucket; compile time reported beside);
- ONNX Runtime: `torch.onnx.export` of the encoder path, run on onnxruntime's CPU
  provider, when onnx and onnxruntime import (else reported as not installed).

The options of one folder and length are timed in turn for --repeats rounds (order
rotating, medians) after one warm-up call each, so the machine's load hits all alike;
ratios are eager time / option time; `--options` picks what is timed beside eager
(`--options eager`: eager alone, an encoder-time table of the folders, e.g. a
teacher beside its all-converted and hybrid students). With --manifest, each folder
is also evaluated eager and int8 on that manifest through `speechbrain_cald.evaluate` (WER/CER or
accuracy; --batch-size, default 1), results under --out.

    OMP_NUM_THREADS=1 python benchmarks/bench_deploy.py \\
        --folders std=<run>/inference target=<run>/inference --seconds 3 10 60 \\
        --manifest <manifests>/test.csv --out /tmp/bench_deploy [--trust-yaml]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (sibling module: the machine line)

from speechbrain_cald import evaluate, inference  # noqa: E402


def onnx_runner(encoder, *inputs):
    """A callable running `encoder` exported to ONNX on onnxruntime, or a string saying
    why there is none (not installed, or the export's first error line)."""
    try:
        import onnxruntime
    except ImportError:
        return "onnx / onnxruntime not installed"
    path = os.path.join(tempfile.mkdtemp(prefix="bench_deploy_"), "encoder.onnx")
    try:
        torch.onnx.export(encoder, inputs, path, dynamo=False)
    except Exception as err:  # the exporter's own error is the finding
        first = (str(err).strip().splitlines() or [""])[0][:160]
        return f"export failed: {type(err).__name__}: {first}"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = [i.name for i in session.get_inputs()]
    feed = dict(zip(name, (x.numpy() for x in inputs)))
    return lambda: torch.from_numpy(session.run(None, feed)[0])


OPTIONS = ("eager", "int8", "compiled", "onnx")


def timed_part(interface, length):
    """(module, its inputs) the interface runs on one input of `length`: a speech
    folder's encoder on `length` seconds of random audio, a text folder's model on
    `length` random token ids; batch 1."""
    one = torch.ones(1)
    if "encoder" in interface.mods:
        return interface.mods.encoder, (torch.randn(1, int(length * 16000)) * 0.1, one)
    vocab = interface.mods.model.model.config.vocab_size
    return interface.mods.model, (torch.randint(vocab, (1, int(length))), one)


def options_for(folder, trust_yaml, length, chosen=OPTIONS):
    """{option: callable or reason} for one folder at one length (the `chosen` options,
    eager always), + compile seconds (None when not compiled)."""

    def load(**kwargs):
        return inference.load_inference_folder(folder, trust_yaml=trust_yaml, **kwargs)

    eager, inputs = timed_part(load(), length)
    options, compile_s = {"eager": lambda: eager(*inputs)}, None
    if "int8" in chosen:
        int8 = timed_part(load(int8=True), length)[0]
        options["int8"] = lambda: int8(*inputs)
    if "compiled" in chosen:
        compiled = timed_part(load(), length)[0]
        compiled.model = torch.compile(compiled.model, dynamic=False)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(*inputs)
        compile_s = time.perf_counter() - start
        options["compiled"] = lambda: compiled(*inputs)
    if "onnx" in chosen:
        options["onnx"] = onnx_runner(eager, *inputs)
    return options, compile_s


def measure(folder, trust_yaml, length, repeats, chosen=OPTIONS):
    """{option: (median seconds, max |difference| to eager) or reason}, compile s."""
    options, compile_s = options_for(folder, trust_yaml, length, chosen)
    runnable = {k: v for k, v in options.items() if callable(v)}
    times = {k: [] for k in runnable}
    with torch.no_grad():
        reference = runnable["eager"]()
        error = {k: float((fn() - reference).abs().max()) for k, fn in runnable.items()}
        names = list(runnable)
        for round_ in range(repeats):
            turn = round_ % len(names)
            for name in names[turn:] + names[:turn]:
                start = time.perf_counter()
                runnable[name]()
                times[name].append(time.perf_counter() - start)
    result = {k: v for k, v in options.items() if not callable(v)}
    result.update({k: (statistics.median(times[k]), error[k]) for k in runnable})
    return result, compile_s


def speed_table(args):
    titles = {"int8": ["int8 s (x)"], "compiled": ["compiled s (x)", "compile s"]}
    titles["onnx"] = ["ONNX Runtime"]
    shown = [o for o in OPTIONS[1:] if o in args.options]
    columns = ["model", "length", "eager s", *(t for o in shown for t in titles[o])]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for name, folder in args.folders:
        for length in args.tokens or args.seconds:
            result, compile_s = measure(folder, args.trust_yaml, length, args.repeats, shown)
            eager = result["eager"][0]

            def cell(option, result=result, eager=eager):
                value = result[option]
                if isinstance(value, str):
                    return value
                return f"{value[0]:.3f} ({eager / value[0]:.2f}x; max diff {value[1]:.2g})"

            unit = " tokens" if args.tokens else " s"
            cells = [f"{name}", f"{length:g}{unit}", f"{eager:.3f}"]
            for option in shown:
                cells.append(cell(option))
                if option == "compiled":
                    cells.append(f"{compile_s:.0f}")
            row = "| " + " | ".join(cells) + " |"
            lines.append(row)
            print(row, flush=True)
    return lines


def accuracy_table(args):
    lines = ["| model | eager | int8 | change |", "|---|---|---|---|"]
    for name, folder in args.folders:
        scores = {}
        for int8 in (False, True):
            out = os.path.join(args.out, f"{name}_{'int8' if int8 else 'fp32'}")
            record = evaluate.evaluate(
                folder,
                args.manifest,
                name,
                batch_size=args.batch_size,
                out=out,
                int8=int8,
                trust_yaml=args.trust_yaml,
            )
            metric = "WER" if "WER" in record else "acc"  # classifiers: mean accuracy over heads
            scores[int8] = record[metric]
        digits = 2 if metric == "WER" else 3  # WER in points, accuracy as a fraction
        row = f"| {name} | {metric} {scores[False]:.{digits}f} | {scores[True]:.{digits}f} | "
        row += f"{scores[True] - scores[False]:+.{digits}f} |"
        lines.append(row)
        print(row, flush=True)
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="+", required=True, metavar="NAME=FOLDER")
    parser.add_argument(
        "--seconds", nargs="*", type=float, default=[3, 10, 60], help="none: no speed table"
    )
    parser.add_argument(
        "--tokens", nargs="+", type=int, help="text folders: these input lengths (not --seconds)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="evaluation batch (1: int8's per-batch activation scales see one utterance)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--options", nargs="+", default=list(OPTIONS), choices=OPTIONS,
        help="what to time beside eager (eager alone: an encoder-time table)",
    )  # fmt: skip
    parser.add_argument("--manifest", help="evaluate eager and int8 on this manifest")
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="bench_deploy_"))
    parser.add_argument(
        "--trust-yaml", action="store_true", help="folders from before cald_inference.json"
    )
    parser.add_argument("--write", help="append the tables to this markdown file")
    args = parser.parse_args()
    args.folders = [pair.split("=", 1) for pair in args.folders]
    print(machine.describe(), flush=True)
    lines = speed_table(args) if args.seconds or args.tokens else []
    if args.manifest:
        lines += ["", *accuracy_table(args)]
    if args.write:
        machine.append_section(
            args.write, "CPU deployment options (bench_deploy.py)", "\n".join(lines), sys.argv[1:]
        )


if __name__ == "__main__":
    main()

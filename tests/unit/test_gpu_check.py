"""tools/gpu_check.py on a machine without CUDA: the CPU parts run and pass at tiny
sizes, every GPU part is skipped with its reason, the report is written in its
documented format, and a part that breaks is reported as failed (exit status 1)."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU run of the check")


def test_cpu_run_passes_its_cpu_parts_and_skips_the_gpu_parts(tmp_path):
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = {p["part"]: p for p in report["parts"]}
    assert list(parts) == ["kernel", "precision", "ddp", "speed"]
    assert parts["kernel"]["status"] == "skipped" and "needs CUDA" in parts["kernel"]["note"]
    assert parts["ddp"]["status"] == "skipped" and "needs 2 GPUs" in parts["ddp"]["note"]
    precision = parts["precision"]
    assert precision["status"] == "passed" and "skipped fp16" in precision["note"]
    ran = {(r["step"], r["precision"]) for r in precision["rows"]}
    kinds = {"teacher (std)", "student (unguided)", "CALD step (target)"}
    assert ran == {(k, p) for k in kinds for p in ("fp32", "bf16")}
    assert all(r["finite"] and r["passed"] for r in precision["rows"])
    speed = parts["speed"]
    assert speed["status"] == "passed"
    assert [r["seconds"] for r in speed["rows"]] == gpu_check.TINY_SECONDS
    assert all(r["forward ratio"] > 0 and r["train ratio"] > 0 for r in speed["rows"])
    markdown = (tmp_path / "gpu_check.md").read_text()
    for part in parts.values():
        assert f"## {part['part']}: {part['status']} (" in markdown
    assert markdown.splitlines()[2] == report["machine"]


def test_a_part_that_breaks_is_a_failure_with_its_traceback(tmp_path, monkeypatch):
    def broken(args):
        raise RuntimeError("kernel mismatch")

    monkeypatch.setitem(gpu_check.PARTS, "kernel", broken)
    assert gpu_check.main(["--out", str(tmp_path), "--parts", "kernel"]) == 1
    (part,) = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert part["status"] == "failed" and "RuntimeError: kernel mismatch" in part["note"]


def test_mamba_sources_import_without_their_compiled_package(tmp_path, monkeypatch):
    """The device machine cannot install mamba-ssm: its kernels are imported from the
    carried sources while `mamba_ssm/__init__.py` (which needs the CUDA build) is not run."""
    package = tmp_path / "src" / "mamba_ssm"
    (package / "ops" / "triton").mkdir(parents=True)
    (package / "utils").mkdir()
    (package / "__init__.py").write_text("raise ImportError('needs selective_scan_cuda')\n")
    (package / "utils" / "helper.py").write_text("VALUE = 3\n")
    (package / "ops" / "triton" / "ssd_combined.py").write_text(
        "from mamba_ssm.utils.helper import VALUE\n"
        "def mamba_chunk_scan_combined(*args):\n    return VALUE\n"
    )
    for name in [m for m in sys.modules if m.split(".")[0] == "mamba_ssm"]:
        monkeypatch.delitem(sys.modules, name)
    module = gpu_check.use_mamba_sources(tmp_path / "src")
    assert module.mamba_chunk_scan_combined() == 3
    for name in [m for m in sys.modules if m.split(".")[0] == "mamba_ssm"]:
        del sys.modules[name]  # leave no stub behind for other tests (not restored)
    with pytest.raises(gpu_check.Skip, match="no mamba_ssm/ops/triton/ssd_combined.py"):
        gpu_check.use_mamba_sources(tmp_path)

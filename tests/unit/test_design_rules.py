"""docs/DESIGN.md's import rules, checked on the source: a room may import the rooms
above it in the architecture table, never those below it; the lobes import nothing
but torch and the optional CUDA kernels (mamba-ssm, causal-conv1d), the standard
library and each other. The table is read from the document itself, so the rule and
the check cannot drift apart."""

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "speechbrain_cald"


def rooms():
    """[(room, {top-level module or package names})] in the table's order."""
    found = []
    for line in (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not line.startswith("| ") or cells[0] in ("room", "---"):
            continue
        names = {item.rstrip("/").split("/")[0] for item in re.findall(r"`([^`]+)`", cells[1])}
        found.append(
            (
                cells[0],
                {
                    n
                    for n in names
                    if (PACKAGE / n).exists() or (PACKAGE / f"{n}.py").exists() or n == "lobes"
                },
            )
        )
    return found


def room_of(module, table):
    """The table index of the room holding `speechbrain_cald.<module ...>`."""
    top = module.split(".")[0]
    return next((i for i, (_, names) in enumerate(table) if top in names), None)


def imports(path):
    """The speechbrain_cald submodules `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = path.relative_to(ROOT).with_suffix("").parts
    if package[0] == "lobes":
        package = ("speechbrain_cald", *package)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level], *([base] if base else [])])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n.split(".", 1)[1] for n in names if n.startswith("speechbrain_cald.")}
    return found


def sources():
    yield from sorted(PACKAGE.rglob("*.py"))
    yield from sorted((ROOT / "lobes").rglob("*.py"))


def test_the_table_names_every_module():
    table = rooms()
    assert [name for name, _ in table][:4] == ["lobes", "input", "models", "conversion"]
    for path in PACKAGE.iterdir():
        name = path.stem
        if name.startswith("_") or (path.is_file() and path.suffix != ".py"):
            continue
        assert room_of(name, table) is not None, f"{name} is in no room of docs/DESIGN.md"


def test_no_room_imports_a_room_below_it():
    table = rooms()
    violations = []
    for path in sources():
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        rel = path.relative_to(ROOT)
        importer = room_of(
            "lobes" if rel.parts[0] == "lobes" else rel.parts[1].removesuffix(".py"), table
        )
        for module in imports(path):
            imported = room_of(module, table)
            if imported is not None and imported > importer:
                violations.append(
                    f"{rel} ({table[importer][0]}) imports {module} ({table[imported][0]})"
                )
    assert not violations, "\n".join(violations)


def test_lobes_import_only_torch_and_each_other():
    kernels = {"mamba_ssm", "causal_conv1d"}  # optional, imported where CUDA runs
    allowed = {"torch", *kernels, "speechbrain_cald", *sys.stdlib_module_names}
    for path in sorted((ROOT / "lobes").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                tops = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops = {node.module.split(".")[0]}
            else:
                continue
            assert tops <= allowed, f"{path.relative_to(ROOT)} imports {tops - allowed}"


def test_lobe_api_lists_every_config_field():
    """docs/LOBE_API.md names every field of each lobe config (it drifted once)."""
    import dataclasses

    from speechbrain_cald.lobes.linformer import LinformerConfig
    from speechbrain_cald.lobes.mamba import MambaConfig
    from speechbrain_cald.lobes.mamba2 import Mamba2Config

    text = (ROOT / "docs" / "LOBE_API.md").read_text(encoding="utf-8")
    for config in (Mamba2Config, MambaConfig, LinformerConfig):
        missing = [f.name for f in dataclasses.fields(config) if f"`{f.name}" not in text]
        assert not missing, f"docs/LOBE_API.md lacks {config.__name__} fields {missing}"

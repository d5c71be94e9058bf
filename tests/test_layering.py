"""The package's dependencies run one way: each module imports its own layer or lower ones.

Bottom to top: core (contract, errors, settings, atomic, time_range, summary_shape,
lineage_check), lake (I/O, with snapshot_io beside it), analysis (pure computation),
triage (triage, mitigation, incidents and gather, the reads a triage makes), Dagster wiring
(assets, sensors, resources, definitions, backfill, run_launcher, dagster_runner), tools
(cli, demo, simulate). Every import counts: module level, inside functions and under
TYPE_CHECKING. A new top-level module or package needs its line in LAYER_OF.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package-dir in pyproject: the wiring lives in top-level folders
SOURCES = {
    "hawkeye_dagster": ROOT / "hawkeye_dagster",
    "hawkeye_dagster.assets": ROOT / "assets",
    "hawkeye_dagster.sensors": ROOT / "sensors",
}
LAYERS = ["core", "lake", "analysis", "triage", "dagster", "tools"]
# module (or package) prefix -> layer; the longest matching prefix wins
LAYER_OF = {
    "hawkeye_dagster": "core",  # the package's own __init__
    "hawkeye_dagster.contract": "core",
    "hawkeye_dagster.errors": "core",
    "hawkeye_dagster.settings": "core",
    "hawkeye_dagster.atomic": "core",
    "hawkeye_dagster.time_range": "core",
    "hawkeye_dagster.summary_shape": "core",
    "hawkeye_dagster.lineage_check": "core",
    "hawkeye_dagster.lake": "lake",
    "hawkeye_dagster.snapshot_io": "lake",
    "hawkeye_dagster.analysis": "analysis",
    "hawkeye_dagster.gather": "triage",
    "hawkeye_dagster.triage": "triage",
    "hawkeye_dagster.mitigation": "triage",
    "hawkeye_dagster.incidents": "triage",
    "hawkeye_dagster.assets": "dagster",
    "hawkeye_dagster.sensors": "dagster",
    "hawkeye_dagster.resources": "dagster",
    "hawkeye_dagster.definitions": "dagster",
    "hawkeye_dagster.backfill": "dagster",
    "hawkeye_dagster.run_launcher": "dagster",
    "hawkeye_dagster.dagster_runner": "dagster",
    "hawkeye_dagster.cli": "tools",
    "hawkeye_dagster.demo": "tools",
    "hawkeye_dagster.simulate": "tools",
}
# third-party packages (and their dagster_* kin) a pure layer may not reach
FORBIDDEN_EXTERNAL = {"analysis": ("dagster",)}
FORBIDDEN_INTERNAL = {"analysis": ("hawkeye_dagster.lake", "hawkeye_dagster.snapshot_io")}


def layer_of(module: str) -> str | None:
    """The layer of a module: that of its longest listed prefix below the package itself."""
    if module == "hawkeye_dagster":
        return LAYER_OF[module]
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        layer = LAYER_OF.get(".".join(parts[:n]))
        if layer is not None:
            return layer
    return None


def package_modules() -> dict[str, Path]:
    modules = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            name = ".".join((package, *rel))
            if package == "hawkeye_dagster" and rel and rel[0] in ("assets", "sensors"):
                continue  # not sources of the package (package-dir maps them elsewhere)
            modules[name] = path
    return modules


def imports_of(module: str, path: Path) -> list[tuple[str, int]]:
    """Every module `module` imports (absolute names), with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                drop = node.level - 1 if is_package else node.level
                base = base[: len(base) - drop] if drop else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # `from pkg import submodule` imports the submodule
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return found


def violations() -> list[str]:
    modules = package_modules()
    problems = []
    for module, path in modules.items():
        own = layer_of(module)
        assert own is not None, f"{module} ({path}) has no layer: add it to LAYER_OF"
        for target, line in imports_of(module, path):
            where = f"{module} ({path.relative_to(ROOT)}:{line})"
            root = target.split(".")[0]
            if any(root == f or root.startswith(f + "_") for f in FORBIDDEN_EXTERNAL.get(own, ())):
                problems.append(f"{where} [{own}] imports {target}, which the {own} layer may not")
                continue
            if root != "hawkeye_dagster":
                continue
            # `from pkg import name` where name is no module: judge pkg
            if target not in modules and target.rsplit(".", 1)[0] in modules:
                continue
            theirs = layer_of(target)
            if theirs is None:
                problems.append(f"{where} [{own}] imports {target}, which has no layer")
            elif LAYERS.index(theirs) > LAYERS.index(own):
                problems.append(f"{where} [{own}] imports {target} [{theirs}], a higher layer")
            elif any(
                target == p or target.startswith(p + ".") for p in FORBIDDEN_INTERNAL.get(own, ())
            ):
                problems.append(f"{where} [{own}] imports {target} [{theirs}]: {own} does no I/O")
    return problems


def test_every_module_has_a_layer():
    for module in package_modules():
        assert layer_of(module) is not None, module


def test_imports_point_down():
    problems = violations()
    assert not problems, "imports against the layering:\n" + "\n".join(problems)

"""The shape of the code: the pipeline runs one way (spec → grid → packs → engine → store → analysis → report),
the import graph has no cycle, and only the engine trains."""

import ast
import re
from pathlib import Path

import depthlab

ROOT = Path(depthlab.__file__).parent

# Layers in pipeline order: a module may import its own layer and earlier ones, never a later one.
LAYERS = ["errors", "stopping", "records", "precision", "models", "data", "measure", "prune", "spec", "train", "results", "run", "shift", "analysis", "report", "study", "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every depthlab module `path` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text())
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("depthlab")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("depthlab"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1  # depthlab itself: lowest


def test_the_pipeline_imports_one_way():
    backwards = sorted(f"{a} imports {b}" for a, deps in graph().items() for b in deps
                       if layer(b) > layer(a) >= 0)
    assert backwards == []


def test_the_import_graph_has_no_cycle():
    edges = graph()
    # a package's __init__ re-exports its modules; the cycles that matter are between modules
    edges = {a: {b for b in deps if not ROOT.joinpath(*b.split(".")[1:], "__init__.py").exists()}
             for a, deps in edges.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in edges.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []
    assert "depthlab.models.network" not in edges["depthlab.models.rewire"] or \
        "depthlab.models.rewire" not in edges["depthlab.models.network"]


TRAINING = re.compile(r"\.backward\(|\.step\(|torch\.optim|PackedOptimizer|zero_grad")


def test_no_module_under_analysis_trains():
    """analysis/ measures trained runs; the engine is the only trainer."""
    offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
                 for p in sorted((ROOT / "analysis").rglob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1) if TRAINING.search(line)]
    assert offenders == []
    assert not (ROOT / "analysis" / "trainer.py").exists()


# What each folder may import from the rest of depthlab (besides itself): the stages beneath it, and only those it
# needs. A new arrow is a decision: add it here, with its reason, or move the code to where it belongs.
FOLDER_RULES = {
    # the mathematics of networks: no data, no training, no store (records: a model field's neutral value)
    "models": {"errors", "choices", "records"},
    "data": {"errors", "outputs"},  # datasets and their registry (outputs: atomic cache files)
    "spec": {"errors", "choices", "records", "models", "data", "prune"},  # a run and a grid of them
    # packs and the one trainer (depthlab: its version, recorded with every run; choices: the layouts it trains in)
    "train": {"depthlab", "errors", "choices", "records", "precision", "models", "data", "measure", "prune", "spec"},
    "results": {"errors", "outputs", "records", "models", "spec"},  # the store knows nothing of training
    "run": {"depthlab", "errors", "choices", "stopping", "records", "precision", "models", "data", "spec", "train",
            "results"},
}


def folder_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "depthlab"


def test_each_stage_imports_only_what_its_rule_allows():
    found = {}
    for a, deps in graph().items():
        if folder_of(a) in FOLDER_RULES:
            found.setdefault(folder_of(a), set()).update(folder_of(b) for b in deps if folder_of(b) != folder_of(a))
    extra = {folder: sorted(found.get(folder, set()) - allowed) for folder, allowed in FOLDER_RULES.items()}
    assert {folder: names for folder, names in extra.items() if names} == {}


def test_the_folders_name_the_pipeline():
    """A newcomer finds each stage by its name: spec -> grid -> packs -> engine -> store -> analysis -> report."""
    for path in ("spec/config.py", "spec/grid.py", "train/packs.py", "train/engine.py", "results/store.py",
                 "run/driver.py", "analysis/compare.py", "report/html.py"):
        assert (ROOT / path).is_file(), path
    assert not (ROOT / "sweep").exists()

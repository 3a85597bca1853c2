"""The package's import graph: no cycles, no import from a lower layer to a higher one, and
no trainer behind robustness, export, energy or the analysis scripts. Read from the source
(every ``import`` statement, module level or inside functions), nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "epsim"

# Layers from low to high; a module may import its own layer or lower ones. The longest
# matching prefix decides a module's layer.
LAYERS = {
    "epsim": 0, "epsim.errors": 0, "epsim.data": 0, "epsim.checkpoint": 0, "epsim.cli": 0,
    "epsim.distributed": 0,
    "epsim.circuit.diodes": 1,          # the diode law: below the models that use it
    "epsim.models": 2,
    # the loader rebuilds a trained network with its memristive device model: above learning
    "epsim.models.loading": 5,
    "epsim.circuit": 3,
    "epsim.solvers": 4,
    "epsim.spice": 4,
    "epsim.learning": 5,
    "epsim.robustness": 6,
    "epsim.operating_point": 6,         # measures free phases of trained circuits
    "epsim.training": 7,
    # commands
    "epsim.train": 8, "epsim.export": 8, "epsim.energy": 8, "epsim.device_sweep": 8,
    "epsim.gradcheck": 8, "epsim.gdu": 8, "epsim.robustness.cli": 8,
    "epsim.robustness.__main__": 8,
}
TRAINERS = ("epsim.training",)
NO_TRAINER = ("epsim.robustness", "epsim.export", "epsim.energy", "epsim.circuit",
              "epsim.solvers", "epsim.models", "epsim.learning", "epsim.spice")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_exists(name: str) -> bool:
    rel = Path(*name.split("."))
    return (REPO / rel.with_suffix(".py")).exists() or (REPO / rel / "__init__.py").exists()


def imports_of(path: Path, name: str) -> set:
    """The epsim modules ``path`` (module ``name``) imports, resolved to modules (a name
    imported from a package counts as its submodule when one of that name exists)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "epsim"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "epsim":
                continue
            subs = {f"{target}.{a.name}" for a in node.names if module_exists(f"{target}.{a.name}")}
            found |= subs if subs and len(subs) == len(node.names) else subs | {target}
    found.discard(name)
    return found


def package_graph() -> dict:
    return {module_name(p, REPO): imports_of(p, module_name(p, REPO))
            for p in sorted(PACKAGE.rglob("*.py"))}


def layer(name: str) -> int:
    best = max((k for k in LAYERS if name == k or name.startswith(k + ".")), key=len)
    return LAYERS[best]


def test_graph_is_read():
    graph = package_graph()
    assert len(graph) > 40
    assert "epsim.solvers.numba_solver" in graph
    assert any(m.startswith("epsim.models") for m in graph["epsim.solvers.numba_solver"])


def test_no_import_cycles():
    graph = package_graph()
    # packages' __init__ re-exporting their submodules is not a cycle through the package
    edges = {m: {t for t in ts if t in graph and not (m.startswith(t + ".") and
                                                     (REPO / Path(*t.split(".")) / "__init__.py").exists())}
             for m, ts in graph.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_from_a_lower_layer_to_a_higher_one():
    bad = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
           for m, ts in package_graph().items() for t in sorted(ts) if layer(t) > layer(m)]
    assert not bad, "\n".join(bad)


def test_robustness_export_energy_and_analysis_do_not_import_a_trainer():
    graph = package_graph()
    bad = [f"{m} imports {t}" for m, ts in graph.items() if m.startswith(NO_TRAINER)
           for t in ts if t.startswith(TRAINERS)]
    for path in sorted((REPO / "analysis").rglob("*.py")):
        name = "analysis." + module_name(path, REPO / "analysis")
        bad += [f"{name} imports {t}" for t in imports_of(path, name) if t.startswith(TRAINERS)]
    assert not bad, "\n".join(bad)

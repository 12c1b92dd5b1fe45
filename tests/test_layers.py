"""The import layers of cpbench/ (README, "Layout"): a module imports only from its own layer and
the layers below it, module-level and lazy imports alike; only the command line (the composition
root) imports from anywhere. And no import circles (``../shared/tools/import-circles`` counts the
same way)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cpbench"

# bottom to top; a pattern ``x.*`` covers the modules under package x, an exact name wins over it
LAYERS = [
    ("foundation", ["errors", "faults", "atomic", "paths", "locks", "threads", "interrupts", "state", "state.unpickle"]),
    ("config and name tables", ["config", "methods.registry", "protocols", "protocols.registry"]),
    ("models", ["models", "models.*"]),
    ("data", ["data", "data.*"]),
    ("engine: what a method may use", ["engine", "engine.precision", "engine.cache", "engine.checkpoint",
                                       "engine.memory", "engine.retrieval", "engine.features"]),
    ("methods", ["methods", "methods.*"]),
    ("engine: the loops that drive a method", ["engine.train", "engine.evaluate", "engine.augment", "engine.views"]),
    ("results", ["results", "results.*"]),
    ("learned state in and out", ["state.*"]),
    ("protocols", ["protocols.*"]),
    ("application", ["", "api", "runner", "launch", "launch.*", "state.export_job", "ui", "ui.*"]),
    ("command line", ["cli", "__main__"]),
]
COMPOSITION_ROOT = {"cli", "__main__"}


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the cpbench modules it imports (module-level, in functions, under TYPE_CHECKING);
    a module importing its own package's face does not count."""
    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name if name in modules else None

    edges: dict[str, set[str]] = {m: set() for m in modules}
    for m, f in modules.items():
        here = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([p for p in ["cpbench", *here[: len(here) - (node.level - 1)]] if p] +
                                    ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            for name in names:
                if name != "cpbench" and not name.startswith("cpbench."):
                    continue
                target = resolve(name[len("cpbench."):] if name != "cpbench" else "")
                if target is not None and target != m and not (m + ".").startswith(target + ".") and target != "":
                    edges[m].add(target)
    return edges


def _layer(module: str) -> int:
    exact = [i for i, (_, pats) in enumerate(LAYERS) if module in pats]
    if exact:
        return exact[0]
    best = None
    for i, (_, pats) in enumerate(LAYERS):
        for p in pats:
            if p.endswith(".*") and module.startswith(p[:-1]) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    assert best is not None, f"cpbench.{module} has no layer: add it to LAYERS here and to the README's layout"
    return best[0]


def test_every_module_has_a_layer_and_imports_only_downwards():
    modules = _modules()
    edges = _imports(modules)
    upward = []
    for m, targets in sorted(edges.items()):
        if m in COMPOSITION_ROOT:
            continue
        for t in sorted(targets):
            if _layer(t) > _layer(m):
                upward.append(f"cpbench.{m} ({LAYERS[_layer(m)][0]}) imports cpbench.{t} ({LAYERS[_layer(t)][0]})")
    assert not upward, "imports from a layer above:\n" + "\n".join(upward)


def test_no_import_circles():
    edges = _imports(_modules())
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v, counter=[0]):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not circles, circles

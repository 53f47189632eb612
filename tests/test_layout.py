"""The dependency rules of the README's layout section, checked on the source (no imports run)."""

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "quant", "calibrators", "datasets", "reports")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (REPO / pkg).rglob("*.py"):
            parts = p.relative_to(REPO).with_suffix("").parts
            mods[".".join(parts[:-1] if p.stem == "__init__" else parts)] = p
    mods["cli"] = REPO / "cli.py"
    return mods


def _imports(mods):
    """(edges: module -> our modules it imports, local: module -> our modules imported inside functions)."""
    edges, local = defaultdict(set), defaultdict(set)
    for m, path in mods.items():
        tree = ast.parse(path.read_text())
        package = m if path.stem == "__init__" else (m.rsplit(".", 1)[0] if "." in m else "")
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("trtquant."):
                target = node.module[len("trtquant."):]
            else:
                continue
            for cand in [target] + [f"{target}.{a.name}" for a in node.names]:
                if cand in mods and cand != m:
                    edges[m].add(cand)
                    if id(node) in in_function:
                        local[m].add(cand)
    return edges, local


def test_the_import_graph_follows_the_layout_rules():
    mods = _modules()
    edges, local = _imports(mods)
    assert len(mods) > 30 and edges["quant.sweep"]            # the parser sees the code
    top = lambda m: m.split(".")[0]                               # noqa: E731
    for m, targets in edges.items():
        for t in targets:
            if top(m) == "core":
                assert top(t) == "core", f"{m} imports {t}: core imports nothing of ours"
            if top(m) in ("datasets", "calibrators", "reports") and top(t) != top(m):
                assert top(t) == "core", f"{m} imports {t}: {top(m)} may import only core"
            assert t != "cli", f"{m} imports cli"
    # no cycles (Tarjan)
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
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
                cycles.append(sorted(comp))

    for v in list(mods):
        if v not in index:
            visit(v)
    assert cycles == []
    # our own modules are imported at module level (cli.py imports lazily on purpose: `--help` stays fast)
    assert {m: sorted(t) for m, t in local.items() if m != "cli"} == {}


# quant/ is layered inside: a module imports only its own layer and those below; a verb imports no verb
QUANT_LAYERS = {"quant.graph": 0, "quant.artifacts": 1, "quant.settings": 2, "quant.statistics": 2,
                "quant.auto_method": 2, "quant.engines": 2, "quant.distributed": 2, "quant.planner": 3,
                "quant.recover": 3, "quant.range_learning": 3}
VERBS = ("quant.calibrate", "quant.build", "quant.evaluate", "quant.sweep", "quant.debug", "quant.tools")


def _quant_layer(m: str) -> int | None:
    if m in VERBS:
        return 4
    return next((v for k, v in QUANT_LAYERS.items() if m == k or m.startswith(k + ".")), None)


def test_quant_is_layered_inside_and_nothing_imports_a_verb():
    mods = _modules()
    edges, _ = _imports(mods)
    quant = sorted(m for m in mods if m.startswith("quant."))
    assert [m for m in quant if _quant_layer(m) is None] == []     # every module of quant/ has its layer
    for m in quant:
        for t in edges[m]:
            if t.startswith("quant."):
                assert _quant_layer(t) <= _quant_layer(m), f"{m} (layer {_quant_layer(m)}) imports {t} (higher)"
                assert t not in VERBS, f"{m} imports the verb {t}"


def test_only_the_runtime_imports_tensorrt():
    hits = []
    for p in REPO.rglob("*.py"):
        if p.relative_to(REPO).parts[0] in PACKAGES:
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, ast.Import) and any(a.name == "tensorrt" for a in node.names):
                    hits.append(p.relative_to(REPO).as_posix())
    assert sorted(set(hits)) == ["core/runtime.py"]

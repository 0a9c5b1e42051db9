"""tests/test_import_graph.py: the import graph of python/lowbit, read from the source with ast
(never importing lowbit): every import of every module, at module level and inside functions,
relative ones resolved, must form an acyclic graph (a failure prints the cycle); and no core
module imports transformers or lowbit.hf when it is imported."""
import ast
import importlib.util
import os
import subprocess
import sys

PKG = "lowbit"
# the lowbit this interpreter imports (found without running it): the source tree built in
# place, or the installed copy CI tests, which alone holds the compiled lowbit._C
ROOT = os.path.dirname(list(importlib.util.find_spec(PKG).submodule_search_locations)[0])
# the package root re-exports everything and registers the transformers quantizer; lowbit.hf is
# that registration: neither is a core module
NOT_CORE = {PKG, f"{PKG}.hf"}
HEAVY = ("transformers", f"{PKG}.hf")


def modules(root=ROOT, pkg=PKG):
    """{dotted name: (path, is_package)} of every .py file of the package ``pkg`` in ``root``
    (path None for a compiled extension)."""
    out = {}
    for d, _, files in os.walk(os.path.join(root, pkg)):
        for f in files:
            if f.endswith((".so", ".pyd")):  # a compiled extension (lowbit._C): imports nothing
                rel = os.path.relpath(os.path.join(d, f.split(".")[0]), root).split(os.sep)
                out[".".join(rel)] = (None, False)
                continue
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
            is_pkg = rel[-1] == "__init__"
            if is_pkg:
                rel = rel[:-1]
            out[".".join(rel)] = (os.path.join(d, f), is_pkg)
    return out


def _imports(path, module_level_only):
    """(module name or None for `from . import`, [names], level) of every import statement;
    with module_level_only, not those inside a function body (they run when called, not on
    import; class bodies do run on import)."""
    if path is None:
        return []
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                   ast.Lambda))
            if isinstance(child, ast.Import) and not (module_level_only and in_function):
                found.extend((a.name, [], 0) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and not (module_level_only and in_function):
                found.append((child.module, [a.name for a in child.names], child.level))
            visit(child, fn)

    visit(tree, False)
    return found


def _resolve(importer, is_pkg, module, level):
    if level == 0:
        return module
    base = importer.split(".")
    if not is_pkg:
        base = base[:-1]  # a module's package
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _ancestors(name):
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def graph(module_level_only=False, root=ROOT, pkg=PKG):
    """{module: {modules it imports}} (lowbit's, and outside names for the HEAVY check).
    ``from P import x``: the submodule P.x where there is one, P itself where x is an attribute
    of P (``from .. import __version__`` needs lowbit/__init__ run to its end). Importing a.b.c
    runs the packages a.b and a first: those count too, except the root package (everything
    is under it) and the packages the importer lives in (already being imported when it runs)."""
    mods = modules(root, pkg)
    edges = {}
    for name, (path, is_pkg) in mods.items():
        out = set()
        for module, names, level in _imports(path, module_level_only):
            target = _resolve(name, is_pkg, module, level)
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
            direct = subs + ([target] if len(subs) < len(names) or not names else [])
            for t in direct:
                out.add(t)
                if t.startswith(pkg + "."):
                    out.update(a for a in _ancestors(t)
                               if a != pkg and not (name == a or name.startswith(a + ".")))
        out.discard(name)
        edges[name] = out
    return edges


def find_cycle(edges):
    """One cycle [a, b, ..., a] of the graph, or None (iterative DFS, three colours)."""
    colour = {}
    for start in sorted(edges):
        if colour.get(start):
            continue
        stack, path = [(start, iter(sorted(edges.get(start, ()))))], [start]
        colour[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                path.pop()
                continue
            if nxt not in edges:  # outside lowbit
                continue
            if colour.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not colour.get(nxt):
                colour[nxt] = 1
                stack.append((nxt, iter(sorted(edges.get(nxt, ())))))
                path.append(nxt)
    return None


def test_reader_on_a_package_written_here(tmp_path):
    """The reader itself, on a small package: a function-level relative import closes a cycle
    it must report; an attribute of the root package is an edge to it; a sibling import inside
    a subpackage is not an edge to that subpackage."""
    files = {"__init__.py": "from . import a\n__version__ = '1'\n",
             "a.py": "from .b import f\n",
             "b.py": "import os\n\n\ndef f():\n    from . import a\n",
             "c.py": "from . import __version__\n",
             "sub/__init__.py": "from .d import g\n",
             "sub/d.py": "from . import e\n\n\ndef g():\n    from ..c import x\n",
             "sub/e.py": "class K:\n    import json\n"}
    for rel, text in files.items():
        p = tmp_path / "pkg" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    edges = graph(root=str(tmp_path), pkg="pkg")
    assert edges["pkg.a"] == {"pkg.b"} and edges["pkg.b"] == {"os", "pkg.a"}
    assert edges["pkg.c"] == {"pkg"} and edges["pkg.sub.d"] == {"pkg.sub.e", "pkg.c"}
    assert edges["pkg.sub.e"] == {"json"}  # a class body runs on import
    assert find_cycle(edges) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])
    at_import = graph(module_level_only=True, root=str(tmp_path), pkg="pkg")
    assert at_import["pkg.b"] == {"os"} and at_import["pkg.sub.d"] == {"pkg.sub.e"}
    assert find_cycle(at_import) is None
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == ["x", "y", "z", "x"]


def test_every_module_is_parsed():
    mods = modules()
    for m in ("lowbit", "lowbit._C", "lowbit.qat", "lowbit.hf", "lowbit.export",
              "lowbit.sparse.sparse24"):
        assert m in mods, m
    assert len(mods) > 20


def test_import_graph_is_acyclic():
    edges = graph()
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle (function-level imports included): " + " -> ".join(cycle)


def test_core_modules_do_not_import_transformers_or_hf_at_import_time():
    edges = graph(module_level_only=True)
    bad = {}
    for name, out in edges.items():
        if name in NOT_CORE:
            continue
        hits = sorted(t for t in out if any(t == h or t.startswith(h + ".") for h in HEAVY))
        if hits:
            bad[name] = hits
    assert not bad, f"core modules importing {HEAVY} at import time: {bad}"


def test_import_lowbit_loads_no_transformers():
    env = dict(os.environ, PYTHONPATH=ROOT)
    code = ("import sys, lowbit, lowbit.distill, lowbit.export, lowbit.checkpoint\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["[]"]

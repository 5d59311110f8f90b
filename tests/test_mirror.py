"""The four backends mirror each other: the same files, the same public functions in the same order,
with the same parameter names; and the layering rules hold. Read from the source (AST): no framework
is imported, so this runs in every environment."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("nin_torch", "nin_tf", "nin_jax", "nin_mxnet")
# Keyword-only parameters that only one framework's idiom needs, each with its reason.
EXTRAS = {
    ("nin_jax", "nin_block"): {"rngs", "dtype", "param_dtype"},  # Flax modules take their RNG streams and dtypes
    ("nin_jax", "build"): {"compute_dtype"},  # Flax's mixed precision: compute dtype apart from parameters
}


def public_functions(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            a = node.args
            out.append((node.name, [x.arg for x in a.posonlyargs + a.args] + ["*"] + [x.arg for x in a.kwonlyargs]))
    return out


def _without_extras(package: str, functions):
    return [(name, [p for p in params if p not in EXTRAS.get((package, name), set())]) for name, params in functions]


def test_backends_have_the_same_files():
    files = {pkg: sorted(p.name for p in (ROOT / pkg).glob("*.py")) for pkg in BACKENDS}
    first = files[BACKENDS[0]]
    assert all(f == first for f in files.values()), files


@pytest.mark.parametrize("module", sorted(p.name for p in (ROOT / BACKENDS[0]).glob("*.py") if p.name != "__init__.py"))
def test_public_functions_mirror(module):
    reference = _without_extras(BACKENDS[0], public_functions(ROOT / BACKENDS[0] / module))
    assert reference, f"{BACKENDS[0]}/{module} has no public function"
    for pkg in BACKENDS[1:]:
        mine = _without_extras(pkg, public_functions(ROOT / pkg / module))
        assert [n for n, _ in mine] == [n for n, _ in reference], \
            f"{pkg}/{module} defines {[n for n, _ in mine]}, {BACKENDS[0]} {[n for n, _ in reference]}"
        for (name, params), (_, want) in zip(mine, reference):
            assert params == want, f"{pkg}/{module}: {name}{tuple(params)} differs from {BACKENDS[0]}'s {tuple(want)}"


def test_a_renamed_function_breaks_the_mirror(tmp_path):
    """The test above can fail: rename one public function in a copy of one backend's model.py."""
    text = (ROOT / "nin_jax" / "model.py").read_text().replace("def layer_shapes(", "def layer_sizes(")
    (tmp_path / "model.py").write_text(text)
    renamed = [n for n, _ in public_functions(tmp_path / "model.py")]
    assert renamed != [n for n, _ in public_functions(ROOT / "nin_torch" / "model.py")]


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                rel = path.relative_to(ROOT).parts
                base = list(rel[: len(rel) - node.level])
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for a in node.names:
                yield module, a.name, node.lineno


def _package_files():
    return [p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] not in ("tests",)
            and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
            and len(p.relative_to(ROOT).parts) > 1]


def rank(package: str) -> int:
    return 0 if package == "common" else 1 if package.startswith("nin_") else 2


def test_layering_imports_only_run_downward_and_no_private_names_cross_modules():
    """common at the bottom, the backends above it, the drivers on top; no cycle between packages;
    no module imports another module's _private name; common imports no framework and no pytest."""
    local = {p.relative_to(ROOT).parts[0] for p in _package_files()}
    problems, edges = [], set()
    frameworks = ("torch", "tensorflow", "keras", "jax", "flax", "optax", "mxnet", "pytest")
    for path in _package_files():
        pkg = path.relative_to(ROOT).parts[0]
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for target, name, line in _imports(path):
            top = target.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}"
            if pkg == "common" and top in frameworks:
                problems.append(f"{where}: common imports {target}")
            if top in local and top != pkg:
                edges.add((pkg, top))
                if rank(top) > rank(pkg):
                    problems.append(f"{where}: {pkg} imports {target}, a layer above it")
                if top.startswith("nin_") and pkg.startswith("nin_"):
                    problems.append(f"{where}: backend {pkg} imports backend {top}")
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                problems.append(f"{where}: imports {target}.{name}, a private name")
        if pkg == "common" and ("importlib" in path.read_text() or "__import__(" in path.read_text()):
            problems.append(f"{path.relative_to(ROOT)}: common loads modules by name")
    cycles = sorted({tuple(sorted(e)) for e in edges if (e[1], e[0]) in edges})
    problems += [f"packages {a} and {b} import each other" for a, b in cycles]
    assert not problems, "\n".join(problems)

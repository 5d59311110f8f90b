"""Every registered backend package fulfils the contract of common/backends.py (CONTRACT: the same
files, the same public functions in the same order, with the same parameter names, and the same
constants), so the packages mirror each other; and the layering rules hold. Read from the source
(AST): no framework is imported, so this runs in every environment."""

import ast
import importlib.util
import inspect
from pathlib import Path

import pytest

from common import backends

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = backends.packages()  # every registered backend package: none escapes the contract
# Keyword-only parameters that only one framework's idiom needs, each with its reason.
EXTRAS = {
    ("nin_jax", "nin_block"): {"rngs", "dtype", "param_dtype"},  # Flax modules take their RNG streams and dtypes
    ("nin_jax", "build"): {"compute_dtype"},  # Flax's mixed precision: compute dtype apart from parameters
    ("nin_mxnet", "make_optimizer"): {"kvstore"},  # Gluon's Trainer reduces the contexts' gradients in a kvstore
}


def package_dir(package: str) -> Path:
    """Where a backend package lives, found as Python finds it (without importing it): the checkout's,
    or one on PYTHONPATH ($NIN_EXTRA_BACKENDS, tests/test_add_backend.py)."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"backend package {package} is not importable"
    return Path(next(iter(spec.submodule_search_locations)))


def public_functions(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            a = node.args
            out.append((node.name, [x.arg for x in a.posonlyargs + a.args] + ["*"] + [x.arg for x in a.kwonlyargs]))
    return out


def module_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def contract_functions(module: str) -> list[tuple[str, list[str]]]:
    """(name, parameters with "*" before the keyword-only ones) of the contract's functions, in order."""
    out = []
    for name in backends.contract_names(module):
        fn = getattr(backends.CONTRACT[module], name, None)
        if not callable(fn):
            continue
        params = list(inspect.signature(fn).parameters.values())[1:]  # without self
        positional = [p.name for p in params if p.kind != p.KEYWORD_ONLY]
        out.append((name, positional + ["*"] + [p.name for p in params if p.kind == p.KEYWORD_ONLY]))
    return out


def _without_extras(package: str, functions):
    return [(name, [p for p in params if p not in EXTRAS.get((package, name), set())]) for name, params in functions]


def test_backends_have_the_same_files():
    files = {pkg: sorted(p.name for p in package_dir(pkg).glob("*.py")) for pkg in PACKAGES}
    first = files[PACKAGES[0]]
    assert all(f == first for f in files.values()), files
    assert {f"{m}.py" for m in backends.CONTRACT} <= set(first), (first, list(backends.CONTRACT))


@pytest.mark.parametrize("module", list(backends.CONTRACT))
@pytest.mark.parametrize("package", PACKAGES)
def test_every_registered_package_fulfils_the_contract(package, module):
    """The contract's functions, in its order, with its parameter names (common/backends.py), and
    its constants; a package's other public functions are not allowed either: what one backend
    offers, all do."""
    path = package_dir(package) / f"{module}.py"
    want = contract_functions(module)
    mine = _without_extras(package, public_functions(path))
    assert [n for n, _ in mine] == [n for n, _ in want], \
        f"{package}/{module}.py defines {[n for n, _ in mine]}; the contract (common/backends.py) {[n for n, _ in want]}"
    for (name, params), (_, expected) in zip(mine, want):
        assert params == expected, f"{package}/{module}.py: {name}{tuple(params)}, the contract's {tuple(expected)}"
    constants = [n for n in backends.contract_names(module) if n not in dict(want)]
    missing = [c for c in constants if c not in module_constants(path)]
    assert not missing, f"{package}/{module}.py lacks the contract's constants {missing}"


def test_a_renamed_function_breaks_the_contract(tmp_path):
    """The test above can fail: rename one public function in a copy of one backend's model.py."""
    text = (ROOT / "nin_jax" / "model.py").read_text().replace("def layer_shapes(", "def layer_sizes(")
    (tmp_path / "model.py").write_text(text)
    renamed = [n for n, _ in public_functions(tmp_path / "model.py")]
    assert renamed != [n for n, _ in contract_functions("model")]
    assert "layer_shapes" in backends.missing_names("model", type("M", (), dict.fromkeys(renamed)))


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


FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "optax", "mxnet", "triton")


def test_layering_imports_only_run_downward_and_no_private_names_cross_modules():
    """common at the bottom, the backends above it, the drivers on top; no cycle between packages;
    no module imports another module's _private name; common imports no framework and no pytest; a
    driver (conformance, benchmarks, training, idioms, gpu, harness, nin) imports no framework and no
    backend package: it reaches a backend through the registry, in the backend's own process
    (harness.processes.load), so all that a framework knows lives in its package."""
    local = {p.relative_to(ROOT).parts[0] for p in _package_files()}
    problems, edges = [], set()
    for path in _package_files():
        pkg = path.relative_to(ROOT).parts[0]
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for target, name, line in _imports(path):
            top = target.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}"
            if pkg == "common" and top in FRAMEWORKS + ("pytest",):
                problems.append(f"{where}: common imports {target}")
            if rank(pkg) == 2 and (top in FRAMEWORKS or top.startswith("nin_")):
                problems.append(f"{where}: driver {pkg} imports {target}; a driver reaches a backend only through "
                                "the registry (harness.processes.load)")
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

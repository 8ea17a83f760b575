"""The house rules of DESIGN.md ("Layers"), checked so they cannot erode quietly.

- the import-linter contracts in pyproject.toml (layers, kernels import nothing from the
  library, the library never imports the CLI, CLI command modules are independent), run
  on a copy of the tree in its installed layout: grimp finds modules under the folder of
  ``find_spec("discretae")``, so in the checkout it cannot see ``kernels/`` and ``cli/``;
- with ``ast``: no module takes another module's ``_private`` name, no module over 500
  lines, no function over 80 lines (the Triton kernel excepted).

Each check fails with the list of what breaks it.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# the fused kernel is one Triton program: it cannot call helpers the way Python does
LONG_FUNCTIONS_ALLOWED = {("discretae.kernels.triton_backend", "_nearest_code_kernel")}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def package_dirs() -> dict[str, Path]:
    """Package name -> source folder, as setuptools maps them at install."""
    mapping = pyproject()["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items()}


@dataclass(frozen=True)
class Module:
    name: str  # dotted, as installed: discretae.kernels.api
    path: Path
    is_package: bool

    @property
    def rel(self) -> str:
        return str(self.path.relative_to(ROOT))


@cache
def library_modules() -> dict[str, Module]:
    """Every module of discretae/, kernels/ and cli/, under its installed name."""
    found: dict[str, Module] = {}
    folders = package_dirs()
    for package, folder in folders.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            if any(p in folders.values() for p in path.parents if p != folder):
                continue  # a mapped folder nested in another one is walked on its own
            is_package = parts[-1] == "__init__"
            name = ".".join((package, *(parts[:-1] if is_package else parts)))
            found.setdefault(name, Module(name, path, is_package))
    return found


@cache
def tree(module: Module) -> ast.Module:
    return ast.parse(module.path.read_text(), filename=str(module.path))


# ---------------------------------------------------------------- import-linter
@pytest.fixture(scope="module")
def installed_layout(tmp_path_factory) -> Path:
    """A copy of the sources arranged as ``pip install .`` lays them out."""
    site = tmp_path_factory.mktemp("site")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package, folder in sorted(package_dirs().items()):
        shutil.copytree(folder, site.joinpath(*package.split(".")), ignore=skip)
    return site


def run_in(site: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=site,  # first on sys.path, so find_spec("discretae") finds the copy
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_graph_sees_kernels_and_cli(installed_layout):
    code = (
        "import grimp\n"
        "g = grimp.build_graph('discretae', cache_dir=None)\n"
        "print(*sorted(g.modules))\n"
    )
    done = run_in(installed_layout, code)
    assert done.returncode == 0, done.stderr
    seen = set(done.stdout.split())
    missing = sorted(set(library_modules()) - seen)
    assert not missing, f"modules the import graph does not see: {missing}"


def test_import_contracts(installed_layout):
    code = "import sys; from importlinter.cli import lint_imports_command; lint_imports_command()"
    done = run_in(installed_layout, code, "--no-cache", "--no-logo", str(ROOT / "pyproject.toml"))
    report = done.stdout + done.stderr
    print(report)
    assert done.returncode == 0, "import contracts broken:\n" + report


def test_every_package_is_installed():
    """A package folder missing from [tool.setuptools] packages is left out of a wheel."""
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    packages = {m.name for m in library_modules().values() if m.is_package}
    assert not packages - listed, f"add to pyproject packages: {sorted(packages - listed)}"
    assert not listed - packages, f"listed but not found: {sorted(listed - packages)}"


# ---------------------------------------------------------------- private names
def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_reach(importer: str, target: str) -> str | None:
    """The first private part of ``target`` that ``importer`` may not take, if any.

    A private name belongs to the module or package it is defined in: ``a.b._c`` and
    everything under it may be used by ``a.b`` and modules inside ``a.b`` only.
    """
    parts = target.split(".")
    for i, part in enumerate(parts):
        owner = ".".join(parts[:i])
        if is_private(part) and importer != owner and not importer.startswith(owner + "."):
            return ".".join(parts[: i + 1])
    return None


def absolute_source(module: Module, node: ast.ImportFrom) -> str:
    """The module an ``ImportFrom`` reads from, with relative dots resolved."""
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def module_bindings(module: Module) -> dict[str, str]:
    """Local name -> library module, for every import in the file (any scope)."""
    modules, bound = library_modules(), {}
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = absolute_source(module, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{source}.{alias.name}"
    return {k: v for k, v in bound.items() if v in modules}


def dotted_module(node: ast.expr, bound: dict[str, str]) -> str | None:
    """The library module an expression names (``readers``, ``discretae.core.files``)."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        base = dotted_module(node.value, bound)
        if base is not None and f"{base}.{node.attr}" in library_modules():
            return f"{base}.{node.attr}"
    return None


def defined_private_names(module: Module) -> set[str]:
    """Private names a module defines: functions, classes, class and self attributes."""
    names = set()
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)
    return {n for n in names if is_private(n)}


def private_uses(module: Module, owners: dict[str, set[str]]) -> list[str]:
    """Where ``module`` takes another module's private name."""
    bound, own = module_bindings(module), defined_private_names(module)
    found = []
    for node in ast.walk(tree(module)):
        where = f"{module.rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom):
            source = absolute_source(module, node)
            targets = [f"{source}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.Attribute) and is_private(node.attr):
            base = dotted_module(node.value, bound)
            if base is not None:
                targets = [f"{base}.{node.attr}"]
            elif node.attr not in own and not _is_self(node.value) and node.attr in owners:
                homes = ", ".join(sorted(owners[node.attr] - {module.name}))
                found.append(f"{where}: .{node.attr} is private to {homes}")
                continue
            else:
                continue
        else:
            continue
        for target in targets:
            if not target.startswith("discretae"):
                continue
            reach = private_reach(module.name, target)
            if reach:
                found.append(f"{where}: {module.name} takes {reach}")
    return found


def _is_self(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    # super()._method(): the class's own family
    return isinstance(node, ast.Call) and getattr(node.func, "id", None) == "super"


def test_no_module_takes_another_modules_private_names():
    owners: dict[str, set[str]] = {}
    for module in library_modules().values():
        for name in defined_private_names(module):
            owners.setdefault(name, set()).add(module.name)
    broken = [hit for m in library_modules().values() for hit in private_uses(m, owners)]
    print("\n".join(broken))
    assert not broken, f"{len(broken)} private name(s) taken across modules:\n" + "\n".join(broken)


# ---------------------------------------------------------------- sizes
def test_no_module_over_500_lines():
    long = []
    for module in library_modules().values():
        n = len(module.path.read_text().splitlines())
        if n > MAX_MODULE_LINES:
            long.append(f"{module.rel}: {n} lines")
    print("\n".join(long))
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


def test_no_function_over_80_lines():
    long = []
    for module in library_modules().values():
        for node in ast.walk(tree(module)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES and (module.name, node.name) not in LONG_FUNCTIONS_ALLOWED:
                long.append(f"{module.rel}:{node.lineno} {node.name}: {n} lines")
    print("\n".join(long))
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


# ---------------------------------------------------------------- the checks check
def test_private_reach_rule():
    assert private_reach("discretae.data.loading", "discretae.data.datasets._drop")
    assert private_reach("discretae.commands", "discretae.kernels._common.error_bound")
    assert private_reach("discretae.kernels.api", "discretae.kernels._common.x") is None
    assert private_reach("discretae.cli.fit", "discretae.cli._common.Json") is None
    assert private_reach("discretae.core.files", "discretae._version.__version__") is None
    assert private_reach("discretae.models.training", "discretae.models.training._step") is None


def test_checks_find_a_planted_violation(tmp_path, monkeypatch):
    """The ast checks see a private import, a private attribute and a long function."""
    (tmp_path / "a.py").write_text("def _hidden():\n    pass\n\nclass A:\n    _slot = 1\n")
    body = "\n".join(["    x = 1"] * MAX_FUNCTION_LINES)
    (tmp_path / "b.py").write_text(
        "from discretae.a import _hidden\nimport discretae.a as a\n\n"
        f"def long(obj):\n{body}\n    return a._hidden, obj._slot\n"
    )
    mods = {
        name: Module(name, tmp_path / f"{name.split('.')[-1]}.py", False)
        for name in ("discretae.a", "discretae.b")
    }
    monkeypatch.setattr(sys.modules[__name__], "library_modules", lambda: mods)
    monkeypatch.setattr(Module, "rel", property(lambda m: m.path.name))
    owners = {"_hidden": {"discretae.a"}, "_slot": {"discretae.a"}}
    hits = private_uses(mods["discretae.b"], owners)
    assert any("takes discretae.a._hidden" in h and "b.py:1" in h for h in hits), hits
    assert any("b.py:85" in h and "takes discretae.a._hidden" in h for h in hits), hits
    assert any("._slot is private to discretae.a" in h for h in hits), hits
    with pytest.raises(AssertionError, match="long: 82 lines"):
        test_no_function_over_80_lines()


# ---------------------------------------------------------------- the checkout's own folders
FIND_ORIGINS = (
    "import importlib.util as u\n"
    "for name in ('discretae.kernels', 'discretae.cli', 'discretae.cli.app'):\n"
    "    print(u.find_spec(name).origin)\n"
)


def find_origins(cwd: Path) -> list[Path]:
    """Where ``python -S`` started in ``cwd`` finds discretae.kernels and discretae.cli."""
    done = subprocess.run(
        [sys.executable, "-S", "-c", FIND_ORIGINS], cwd=cwd, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [Path(line) for line in done.stdout.split()]


def test_checkout_finds_kernels_and_cli_without_an_install():
    """From a clone's root, its discretae/ shadows any installed copy, so it must find
    kernels/ and cli/ itself. -S: no site-packages, so no install can help."""
    origins = find_origins(ROOT)
    expected = [
        ROOT / "kernels" / "__init__.py",
        ROOT / "cli" / "__init__.py",
        ROOT / "cli" / "app.py",
    ]
    assert origins == expected


def test_installed_layout_uses_its_own_folders(installed_layout):
    origins = find_origins(installed_layout)
    package = installed_layout / "discretae"
    expected = [package / "kernels" / "__init__.py", package / "cli" / "__init__.py"]
    assert origins[:2] == expected

"""The package layout keeps its boundaries: no import circles, client/ and server/ apart, flwr in one place.

Every import statement counts, including those under `if TYPE_CHECKING:` and inside functions: the files are
parsed, never imported. Importing `a.b.c` (or a name from it) also counts as importing the packages `a` and
`a.b`, because Python runs their `__init__` first.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_TOP = ("tests", "build", "results")  # not part of the installed packages
FLWR_HOME_IN_COMMON = "common.federation.records"  # the one module of common/ that may import flwr
CLI = "cli"  # the command line: it imports the library, never the other way round


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


@cache
def module_imports() -> dict[str, frozenset[str]]:
    """{module: every dotted name its import statements mention}; `from m import x` gives "m" and "m.x"."""
    mods: dict[str, frozenset[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        top = path.relative_to(ROOT).parts[0]
        if top.startswith(".") or top in SKIPPED_TOP:
            continue
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps |= {f"{node.module}.{alias.name}" for alias in node.names}
        mods[_module_name(path)] = frozenset(deps)
    return mods


def _submodules(package: str) -> set[str]:
    return {m[len(package) + 1 :].split(".")[0] for m in module_imports() if m.startswith(package + ".")}


def imports(a: str, b: str) -> bool:
    """Whether module `a` imports module `b`: names `b`, or a name inside `b` that is not one of its submodules."""
    subs = _submodules(b)
    return any(d == b or (d.startswith(b + ".") and d[len(b) + 1 :] not in subs) for d in module_imports()[a])


def _inside(module: str, package: str) -> bool:
    """Whether `module` is `package` or one of its submodules ("client" is not inside "cli")."""
    return module == package or module.startswith(package + ".")


def cli_importers(mods: dict[str, frozenset[str]]) -> list[str]:
    """"<module> imports <name>" for every module outside cli/ that imports cli or something in it."""
    return sorted(
        f"{module} imports {dep}"
        for module, deps in mods.items()
        if not _inside(module, CLI)
        for dep in deps
        if _inside(dep, CLI)
    )


def _related(a: str, b: str) -> bool:
    """A package and the modules inside it import each other by design (`__init__` re-exports)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def import_graph() -> dict[str, set[str]]:
    mods = module_imports()
    return {a: {b for b in mods if not _related(a, b) and imports(a, b)} for a in mods}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_two_modules_import_each_other() -> None:
    """No pair of modules imports each other, whatever the import is for (types included)."""
    # Prepare
    mods = sorted(module_imports())
    # Execute
    pairs = [(a, b) for a in mods for b in mods if a < b and not _related(a, b) and imports(a, b) and imports(b, a)]
    # Assert
    assert pairs == []


def test_no_import_cycles() -> None:
    """No longer circle either (a -> b -> c -> a): the modules can be read, and tested, bottom up."""
    # Prepare
    graph = import_graph()
    # Execute
    cycles = import_cycles(graph)
    # Assert
    assert cycles == []


def test_cycle_finder_finds_a_three_module_circle() -> None:
    """The cycle check itself: a circle of three is found, a chain is not."""
    # Prepare
    circle = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    chain = {"a": {"b"}, "b": {"c"}, "c": set()}
    # Execute
    found, none = import_cycles(circle), import_cycles(chain)
    # Assert
    assert found == [["a", "b", "c"]]
    assert none == []


def test_client_and_server_never_import_each_other() -> None:
    """client/ and server/ are two thin Flower shells side by side; what both need lives in common/."""
    # Prepare
    mods = module_imports()
    # Execute
    crossing = sorted(
        f"{module} imports {dep}"
        for module, deps in mods.items()
        for dep in deps
        for this, other in (("client", "server"), ("server", "client"))
        if (module == this or module.startswith(this + ".")) and (dep == other or dep.startswith(other + "."))
    )
    # Assert
    assert crossing == []


def test_common_imports_flwr_only_in_federation_records() -> None:
    """common/ is the ML library and works without Flower; only the record conversion touches flwr."""
    # Prepare
    mods = module_imports()
    # Execute
    flwr_users = sorted(
        module
        for module, deps in mods.items()
        if (module == "common" or module.startswith("common."))
        and any(dep == "flwr" or dep.startswith("flwr.") for dep in deps)
    )
    # Assert
    assert flwr_users == [FLWR_HOME_IN_COMMON]


def test_only_the_command_line_imports_cli() -> None:
    """Parsing sits on top of the library: common/, client/, server/ and simulations/ never import cli/."""
    # Prepare
    mods = module_imports()
    # Execute
    importers = cli_importers(mods)
    # Assert
    assert importers == []


def test_cli_import_check_finds_a_library_module_importing_cli() -> None:
    """The check itself: a library module importing cli is found; cli importing itself and "client" are not."""
    # Prepare
    mods = {"simulations.x": frozenset({"cli.train"}), "cli.main": frozenset({"cli.data"}),
            "server.app": frozenset({"client.app"})}
    # Execute
    found = cli_importers(mods)
    # Assert
    assert found == ["simulations.x imports cli.train"]


PURPOSE_PACKAGES = ("runner", "bench", "privacy")  # simulations/ holds these subpackages and nothing else


def test_simulations_is_split_by_purpose() -> None:
    """simulations/ has no loose modules: the runner, benchmarks and privacy experiments each have a subpackage,
    and deployment (not a simulation) and serving sit at the top level."""
    # Prepare
    folder = ROOT / "simulations"
    # Execute
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != "__init__.py")
    subpackages = sorted(p.name for p in folder.iterdir() if (p / "__init__.py").is_file())
    # Assert
    assert loose == []
    assert subpackages == sorted(PURPOSE_PACKAGES)
    assert (ROOT / "deployment" / "__init__.py").is_file() and (ROOT / "serving" / "__init__.py").is_file()


def layout_table(readme: str) -> list[str]:
    """The 'where' cells of the README's layout table."""
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return [line.rsplit("|", 2)[1] for line in section.splitlines() if line.startswith("| ") and "`" in line]


def cited_paths(cell: str) -> tuple[list[str], list[str]]:
    """(paths cited in a cell, 'folder/name' for each module a folder's parenthesised list names)."""
    import re

    paths: list[str] = []
    members: list[str] = []
    for folder, listing in re.findall(r"`([\w./]+)`(?: \(([^)]*)\))?", cell):
        paths.append(folder)
        if folder.endswith("/") and listing:
            members += [folder + name for name in re.findall(r"`([\w./]+)`", listing) if "/" not in name.rstrip("/")
                        or name.endswith("/")]
    return paths, members


def test_readme_layout_table_matches_the_tree() -> None:
    """Every path and module the README's layout table names exists, and every package of the tree is named."""
    # Prepare
    cells = layout_table((ROOT / "README.md").read_text())
    cited: list[str] = []
    listed: list[str] = []
    for cell in cells:
        paths, members = cited_paths(cell)
        cited += paths
        listed += members
    # Execute
    missing = [p for p in cited if not (ROOT / p).exists()]
    missing += [m for m in listed if not any((ROOT / (m + ext)).exists() for ext in ("", ".py"))]
    packages = sorted(str(p.parent.relative_to(ROOT)) + "/" for p in ROOT.rglob("__init__.py")
                      if p.relative_to(ROOT).parts[0] not in (*SKIPPED_TOP, ".venv", ".work")
                      and not p.relative_to(ROOT).parts[0].startswith("."))
    unnamed = [p for p in packages if not any(c == p or c.startswith(p) for c in cited + listed)]
    # Assert
    assert cells, "no layout table found under '## Layout'"
    assert missing == []
    assert unnamed == []


# -- one model interface (issue 17) -------------------------------------------------------------------------------
ARCH_NAMES = frozenset({"SEQ", "TEXT"})  # the constants of common/names.py
ARCH_LITERALS = frozenset({"seq", "text"})
MODEL_CLASSES = frozenset({"RecModel", "SeqRecModel"})
# Where code may pick between the archs: the registry and the implementations themselves.
ARCH_HOMES = ("common.federation.arch", "common.federation.text_task", "common.federation.seq_task")
# Branches outside them, each with the reason it stays (a comment at the branch says the same).
ARCH_BRANCH_ALLOWED = {
    "common.protocol": "torch-free run config: which keys (adapter kind, adapter layers) an arch reads",
    "common.rec.experiment": "central `fedadapt train`: per-arch modes, trainers and saved formats",
    "cli.train": "a seq run's text-model options keep the text defaults (its text baselines train with them)",
    "simulations.bench.compare": "the table label of the federated row",
    "simulations.bench.quality": "a central run's saved format; the seq-only no-history rows",
    "simulations.bench.secagg": "seq bank shapes from --seq-items without a data folder",
    "simulations.privacy.experiments.membership": "central training of each arch",
    "simulations.privacy.scores": "the attack's features are each model's own loss",
    "serving.run": "serving is built on the seq model's user tower; a run of another arch is refused by name",
    "common.privacy.user_level": "user-level DP trains the seq model's per-user updates; arch=text is refused by name",
    "simulations.privacy.user_curve.options": "the user-level curve runs the seq model; --arch text is refused by name",
}


def _names_arch(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ARCH_NAMES or node.id == "arch"
    if isinstance(node, ast.Attribute):
        return node.attr in ARCH_NAMES or node.attr == "arch"
    return isinstance(node, ast.Constant) and node.value in ARCH_LITERALS


def _class_name(node: ast.expr) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def arch_branches(source: str) -> list[int]:
    """Lines that pick between the archs: `x == SEQ`, `arch != "text"`, `isinstance(m, SeqRecModel)`, ..."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            if any(_names_arch(side) for side in (node.left, *node.comparators)):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            kinds = node.args[1:] and node.args[1]
            classes = kinds.elts if isinstance(kinds, ast.Tuple) else [kinds] if kinds else []
            if any(_class_name(c) in MODEL_CLASSES for c in classes):
                lines.append(node.lineno)
    return sorted(lines)


def test_only_the_arch_registry_and_implementations_branch_on_the_arch() -> None:
    """Federation, benchmarks, privacy and the CLI call the arch interface (common/federation/arch.py) instead
    of comparing arch names or model classes; the few justified places are listed with their reason."""
    # Prepare
    found: dict[str, list[int]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        top = path.relative_to(ROOT).parts[0]
        module = _module_name(path)
        if top.startswith(".") or top in SKIPPED_TOP or any(_inside(module, home) for home in ARCH_HOMES):
            continue
        # Execute
        lines = arch_branches(path.read_text())
        if lines:
            found[module] = lines
    # Assert
    assert sorted(set(found) - set(ARCH_BRANCH_ALLOWED)) == []
    assert sorted(set(ARCH_BRANCH_ALLOWED) - set(found)) == []  # an entry no longer needed is removed


def test_arch_branch_scan_finds_comparisons_and_class_checks() -> None:
    """The scan itself: name, literal and attribute comparisons and model-class checks count; membership in
    ARCHS and passing an arch name along do not."""
    # Prepare
    source = ("if cfg.arch == SEQ: pass\n"
              "x = 1 if opts.arch != 'text' else 2\n"
              "if isinstance(model, (RecModel, int)): pass\n"
              "if arch not in ARCHS: pass\n"
              "run(arch=SEQ)\n"
              "if mode == 'seq-x': pass\n")
    # Execute
    lines = arch_branches(source)
    # Assert
    assert lines == [1, 2, 3]

"""experiments/ imports flow one way (issue 30): no module of it imports
another that imports it back, directly or through others, whether the import
sits at the top of the module or inside a function (a cycle inside functions
still ties the modules' concerns together, and breaks as soon as one of the
imports moves up). Not in the graph: a module's ``if __name__ == "__main__":``
block (it runs only when the file is the command, ``python -m experiments.X``,
never when another module imports it) and dynamic imports
(``importlib.import_module`` of a chapter named at run time)."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "experiments"


def is_main_block(node):
    """Whether ``node`` is ``if __name__ == "__main__": ...``."""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def nodes_outside_main_block(tree):
    """Every node of ``tree`` but those of its ``__main__`` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo += [child for child in ast.iter_child_nodes(node) if not is_main_block(child)]


def imported_modules(tree):
    """The experiments modules that ``tree`` imports (by name, anywhere in it but its ``__main__`` block)."""
    found = set()
    for node in nodes_outside_main_block(tree):
        if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(PACKAGE + ".")}
    return found


def import_graph(folder=REPO / PACKAGE):
    """{module: the experiments modules it imports} for every module of ``folder``."""
    modules = {p.stem: p for p in folder.glob("*.py") if p.stem != "__init__"}
    return {name: sorted(imported_modules(ast.parse(p.read_text(), str(p))) & set(modules) - {name})
            for name, p in modules.items()}


def a_cycle(graph):
    """One import cycle of ``graph`` as [a, b, ..., a], or None (depth-first search)."""
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in graph.get(m, ()):
            if state.get(n) == "open":
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        state[m] = "done"
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_a_cycle_is_found_when_there_is_one():
    assert a_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert a_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_the_import_graph_reads_every_kind_of_import():
    tree = ast.parse("from experiments import a, b\nimport experiments.c\n"
                     "def f():\n    from experiments.d import x\n"
                     "if __name__ == '__main__':\n    from experiments import e\n")
    assert imported_modules(tree) == {"a", "b", "c", "d"}


def test_experiments_has_no_import_cycle():
    graph = import_graph()
    assert {"driver", "session", "checkpoints", "progress"} <= set(graph)
    assert a_cycle(graph) is None, f"import cycle: {' -> '.join(a_cycle(graph))}"


CHAPTERS = ["chap1", "chap3", "chap4", "chap5", "chap6"]


def test_planning_reads_each_chapters_command_line_without_running_its_main(monkeypatch):
    """``driver.chapter_args`` parses a chapter's command line through its
    ``command_line`` (planning mode: nothing started, nothing checked on disk),
    never through its ``main``."""
    import importlib

    from experiments import driver
    for chapter in CHAPTERS:
        module = importlib.import_module(f"experiments.{chapter}")

        def refused(*a, **k):
            raise AssertionError("planning ran main")
        monkeypatch.setattr(module, "main", refused)
        args = driver.chapter_args(chapter, ["--quick", "--part", "1/2"])
        assert args.chapter == chapter and args.quick and args.part == (1, 2)
        assert args.run_id is None and args.started is None and args.share is None   # not started, no share taken


MUTATORS = {"append", "extend", "update", "clear", "pop", "popitem", "setdefault", "add", "discard", "remove",
            "insert", "__next__", "acquire", "release"}
# The module-level state left: none. What a command changes while it runs (the Ctrl-C note's rows and
# checkpoint, the owner-file locks it holds, the figures it announced) lives in its session.Session, made
# per command and passed explicitly; what describes the run is the immutable context.RunContext.
PROCESS_STATE = set()


def mutated_module_names(tree):
    """The module-level names of ``tree`` that its code changes in place or rebinds (``global``)."""
    names = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
             if isinstance(t, ast.Name)}
    changed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            changed |= set(node.names)
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(node, (ast.Assign, ast.AugAssign)) and isinstance(target, ast.Subscript) \
                and isinstance(target.value, ast.Name):
            changed.add(target.value.id)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS \
                and isinstance(node.func.value, ast.Name):
            changed.add(node.func.value.id)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "next" \
                and node.args and isinstance(node.args[0], ast.Name):
            changed.add(node.args[0].id)
    return changed & names


def test_mutated_module_names_finds_state_changed_in_place():
    tree = ast.parse("A = {}\nB = []\nC = (1,)\nN = iter(())\nL = Lock()\ndef f():\n    A['k'] = 1\n"
                     "    B.append(2)\n    next(N)\n    L.acquire()\n    x = {}\n    x['k'] = 1\n")
    assert mutated_module_names(tree) == {"A", "B", "N", "L"}


def test_a_run_id_needs_no_counter_and_tells_apart_runs_of_one_second():
    import re

    from experiments import driver
    ids = {driver.run_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"\S+ pid \d+ #[0-9a-f]{8}", i) for i in ids)


def test_experiments_keeps_no_run_state_in_module_globals():
    found = {(p.stem, name) for p in (REPO / PACKAGE).glob("*.py")
             for name in mutated_module_names(ast.parse(p.read_text(), str(p)))}
    assert found == PROCESS_STATE


def test_the_run_context_cannot_be_changed_only_replaced(tmp_path):
    """A run's context is built once (``driver.parse_args``) and never changed:
    setting a field or a chapter's option raises; a job's view of the run is
    a new context (``replace``), the original left as it was."""
    import dataclasses

    import pytest

    from experiments import driver
    args = driver.chapter_args("chap6", ["--quick", "--out", str(tmp_path), "--nets", "1", "--epochs", "2"])
    assert args.epochs == 2 and args.nets == (1,) and args.options["epochs"] == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.seed = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.nets = [0]
    with pytest.raises(TypeError):
        args.options["nets"] = [0]
    view = args.replace(nets=[0, 2], unit_seeds=(5,), x64=True)
    assert view.nets == (0, 2) and view.unit_seeds == (5,) and view.x64 and view.session is args.session
    assert args.nets == (1,) and args.unit_seeds is None and not args.x64
    assert getattr(args, "book_seed", None) is None   # another chapter's option: not there


def test_book_seed_implies_x64_in_a_new_context_not_by_changing_one():
    from experiments import book_replay, driver
    args = driver.chapter_args("chap3", ["--only", "3.7", "--book-seed", "12345678"])
    assert args.book_seed == 12345678 and args.x64
    plain = driver.chapter_args("chap3", ["--only", "3.7"])
    assert book_replay.implied(plain) is plain and not plain.x64

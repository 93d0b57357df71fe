"""The layout and its one-way imports (issue 26).

The root holds the product's design-card files (vit_model.py, data_augmentations.py) and the
commands; everything else is in the vitcifar package, whose subpackages import one way:

    errors -> config -> backend -> ops -> (vit_model, data_augmentations) -> data -> runs
           -> analysis -> training, deploy -> commands -> root commands

Each module may import only modules of a lower layer or of its own subpackage (as long as no
cycle forms). Every import counts, including those inside functions."""
import ast
import glob
import os

import pytest

from helpers import ROOT

DESIGN_CARD = {"vit_model", "data_augmentations"}
ROOT_COMMANDS = {"train_cifar10", "train_cifar100", "train_images", "evaluate", "predict",
                 "export", "onnx_predict", "visualize", "preview_augmentations", "flops"}
LAYERS = ["vitcifar.errors", "vitcifar.config", "vitcifar.backend", "vitcifar.ops", "design card",
          "vitcifar.data", "vitcifar.runs", "vitcifar.analysis",
          ("vitcifar.training", "vitcifar.deploy"), "vitcifar.commands", "root commands"]
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def rank(module: str) -> int:
    if module in DESIGN_CARD:
        return LAYERS.index("design card")
    if module in ROOT_COMMANDS:
        return LAYERS.index("root commands")
    for index, layer in enumerate(LAYERS):
        for prefix in (layer if isinstance(layer, tuple) else (layer,)):
            if module == prefix or module.startswith(prefix + "."):
                return index
    raise KeyError(module)


def group(module: str) -> str:
    """The subpackage (vitcifar.data) or root file a module belongs to."""
    return ".".join(module.split(".")[:2])


def app_modules(root=ROOT):
    """{dotted module name: path} of every app module: the root's and the package's."""
    paths = glob.glob(os.path.join(root, "*.py")) + glob.glob(
        os.path.join(root, "vitcifar", "**", "*.py"), recursive=True)
    modules = {}
    for path in paths:
        name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        modules[name.removesuffix(".__init__")] = path
    return modules


def imports_of(path, modules):
    """The app modules a file imports, at any depth (functions, __main__ blocks):
    `from vitcifar.data import cifar` counts as vitcifar.data.cifar."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules}


def test_the_root_holds_the_design_card_and_the_commands_only():
    root = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
    assert root == DESIGN_CARD | ROOT_COMMANDS


def test_every_subpackage_says_what_it_is_for_and_may_import():
    for init in glob.glob(os.path.join(ROOT, "vitcifar", "*", "__init__.py")):
        source = open(init, encoding="utf-8").read()
        tree = ast.parse(source)
        assert ast.get_docstring(tree) and "May import" in ast.get_docstring(tree), init
        assert len(tree.body) == 1, f"{init} holds code; it is a docstring only"


def test_no_module_imports_one_of_a_higher_layer():
    modules = app_modules()
    upward = [f"{name} imports {target}" for name, path in modules.items()
              for target in imports_of(path, modules)
              if rank(target) > rank(name) and group(target) != group(name)]
    assert upward == []


def test_the_design_card_files_import_nothing_that_imports_them():
    """vit_model.py and data_augmentations.py stand on their own: what they import from the
    package imports neither of them, directly or through others."""
    modules = app_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        return seen

    for card in DESIGN_CARD:
        for target in graph[card]:
            assert not reach(target) & DESIGN_CARD, f"{card} imports {target}, which imports it"


def test_the_import_graph_has_no_cycle():
    modules = app_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", " -> ".join(trail + [node])
        state[node] = "open"
        for target in sorted(graph[node]):
            visit(target, trail + [node])
        state[node] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_no_command_is_imported_below_the_commands():
    """Nothing imports a root command (benchmarks included); only root commands import
    vitcifar.commands, and no command module imports another."""
    modules = app_modules()
    paths = dict(modules, **{p: p for p in glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))})
    for name, path in paths.items():
        imported = imports_of(path, modules)
        assert not imported & ROOT_COMMANDS, f"{name} imports {imported & ROOT_COMMANDS}"
        command_modules = {t for t in imported if t.startswith("vitcifar.commands.")}
        if name.startswith("vitcifar.commands."):
            assert command_modules <= {name}, f"{name} imports {command_modules}"
        elif name not in ROOT_COMMANDS and not path.startswith(os.path.join(ROOT, "benchmarks")):
            assert not command_modules, f"{name} imports {command_modules}"


def test_root_commands_are_thin():
    """A root command names its body in vitcifar.commands and runs it: no logic of its own."""
    for name in ROOT_COMMANDS:
        tree = ast.parse(open(os.path.join(ROOT, f"{name}.py"), encoding="utf-8").read())
        assert not [node for node in tree.body
                    if isinstance(node, (ast.FunctionDef, ast.ClassDef))], name
        assert len(tree.body) <= 6, name


def test_modules_and_functions_stay_short():
    """No module over MAX_MODULE_LINES lines, no function over MAX_FUNCTION_LINES (app and
    benchmarks alike): a longer one holds two jobs."""
    paths = list(app_modules().values()) + glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))
    too_long = []
    for path in paths:
        source = open(path, encoding="utf-8").read()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{os.path.relpath(path, ROOT)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{os.path.relpath(path, ROOT)}: {node.name}, {length} "
                                    "lines")
    assert too_long == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The checks above can fail: a function-level upward import is found, and a module
    of a higher layer ranks above one of a lower."""
    module = tmp_path / "sneaky.py"
    module.write_text("def f():\n    from vitcifar.training import trainer\n"
                      "    import vitcifar.commands.train\n")
    modules = {"vitcifar.training.trainer": "", "vitcifar.commands.train": "",
               "vitcifar.config.settings": ""}
    assert imports_of(str(module), modules) == {"vitcifar.training.trainer",
                                                "vitcifar.commands.train"}
    assert rank("vitcifar.training.trainer") > rank("vitcifar.data.cifar") > rank("vit_model")


@pytest.mark.slow
def test_flags_are_checked_before_tensorflow_is_imported():
    """The modules a command needs to parse and check its flags and open a run directory
    import no TensorFlow: a bad flag fails fast, and the GPU is chosen before the import."""
    import subprocess
    import sys
    probe = ("import sys; import vitcifar.config.flags, vitcifar.config.presets, "
             "vitcifar.config.regularisation, vitcifar.config.config_file, "
             "vitcifar.backend.devices, vitcifar.errors, vitcifar.data.cifar, "
             "vitcifar.runs.checkpoint, vitcifar.runs.resume, vitcifar.runs.run_dir, "
             "vitcifar.runs.time_budget, vitcifar.training.precision, "
             "vitcifar.commands.train, vitcifar.data.image_folders; "
             "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.stdout.strip() == "False", result.stderr

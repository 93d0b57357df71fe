"""The modules import one way: entry points -> cli -> training -> fit_loop -> library modules
-> flags, run_dir -> config -> errors, datasets. Every import counts, including those inside
functions."""
import ast
import glob
import os

import pytest

from helpers import ROOT

ENTRY_POINTS = {"train_cifar10", "train_cifar100", "evaluate", "predict", "visualize",
                "flops", "preview_augmentations", "export", "onnx_predict"}
# Each module may import only modules of a lower rank; modules of one rank may import each
# other as long as no cycle forms (checked separately). Entry points are never imported
# (visualize and flops are also library modules: only their __main__ blocks are commands).
RANKS = {
    "errors": 0, "datasets": 0, "keras_compat": 0, "time_budget": 0, "op_coverage": 0,
    "onnx_fusion": 0,
    "config": 1, "prediction_io": 1, "deployed_model": 1, "vit_kernels": 1,
    "flags": 2, "run_dir": 2,
    "checkpoint": 3, "cifar_data": 3, "devices": 3, "data_augmentations": 3, "vit_model": 3,
    "flops": 3, "optimization": 3,
    "resume": 4, "precision": 4, "input_pipeline": 4, "visualize": 4, "distribution": 4,
    "model_export": 4,
    "fit_loop": 5,
    "training": 6,
    "cli": 7,
}


def app_modules():
    return {os.path.splitext(os.path.basename(p))[0]: p
            for p in glob.glob(os.path.join(ROOT, "*.py"))}


def imports_of(path, modules):
    """The app modules a file imports, at any depth (functions, __main__ blocks)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(modules)


def test_every_module_has_a_rank_or_is_an_entry_point():
    modules = app_modules()
    assert set(modules) <= set(RANKS) | ENTRY_POINTS, set(modules) - set(RANKS) - ENTRY_POINTS


def test_no_module_imports_one_above_it():
    modules = app_modules()
    upward = []
    for name, path in modules.items():
        if name not in RANKS:
            continue                                   # entry points may import anything
        for target in imports_of(path, modules):
            if target in ENTRY_POINTS - set(RANKS) or RANKS[target] > RANKS[name]:
                upward.append(f"{name} imports {target}")
    assert upward == []


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


def test_no_command_imports_another_command():
    modules = app_modules()
    commands = ENTRY_POINTS - set(RANKS)
    paths = list(modules.values()) + glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))
    for path in paths:
        imported = imports_of(path, modules) & commands
        assert not imported, f"{path} imports {imported}"


def test_nothing_but_entry_points_and_benchmarks_imports_cli_or_training():
    modules = app_modules()
    for name, path in modules.items():
        allowed = {"cli": ENTRY_POINTS - {"visualize", "flops"},
                   "training": ENTRY_POINTS - {"visualize", "flops"} | {"cli"}}
        for target in ("cli", "training"):
            if target in imports_of(path, modules):
                assert name in allowed[target], f"{name} imports {target}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The checks above can fail: a function-level upward import is found."""
    module = tmp_path / "sneaky.py"
    module.write_text("def f():\n    import training\n    from cli import main\n")
    assert imports_of(str(module), {"training": "", "cli": "", "config": ""}) == \
        {"training", "cli"}


@pytest.mark.slow
def test_flags_are_checked_before_tensorflow_is_imported():
    """The modules a command needs to parse and check its flags and open a run directory
    import no TensorFlow: a bad flag fails fast, and the GPU is chosen before the import."""
    import subprocess
    import sys
    probe = ("import sys; import checkpoint, cli, config, devices, errors, flags, precision, "
             "resume, run_dir, cifar_data, datasets, time_budget; "
             "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.stdout.strip() == "False", result.stderr

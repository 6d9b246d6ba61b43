"""The repository's shape: every top-level script imports only minigpt/ and libraries, never another script
(what two scripts share lives in minigpt/, so a reader finds each concept in one place), and minigpt/ never
imports a script."""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "*.py")))


def imported_modules(path):
    """Every module an `import x` or `from x import y` names, at any depth of the file (in functions too)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_scripts_are_found():
    assert {"train_ppo", "train_grpo", "evaluate", "sweep", "pipeline", "bench"} <= set(SCRIPTS)


def test_no_script_imports_another_script():
    offences = {s: sorted(imported_modules(os.path.join(ROOT, f"{s}.py")) & (set(SCRIPTS) - {s}))
                for s in SCRIPTS}
    assert not {s: found for s, found in offences.items() if found}


def test_the_library_imports_no_script():
    for path in glob.glob(os.path.join(ROOT, "minigpt", "*.py")):
        assert not imported_modules(path) & set(SCRIPTS), path


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("def f():\n    import train_ppo\n    from evaluate import reward_scores\n")
    assert {"train_ppo", "evaluate"} <= imported_modules(str(path))

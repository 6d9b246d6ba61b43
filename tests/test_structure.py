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


# ---- the sizes a reader can hold in mind (issue #30's targets) ---------------------------------------------
CODE = sorted(glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "minigpt", "*.py")))
READ_FIRST_OPEN, READ_FIRST_CLOSE = "# ======== read this first:", "# ======== end of read this first"


def test_no_line_over_110_characters():
    paths = (CODE + glob.glob(os.path.join(ROOT, "tests", "*.py"))
             + glob.glob(os.path.join(ROOT, "notebooks", "_src", "*.py")))
    long = [f"{os.path.relpath(p, ROOT)}:{i}" for p in paths
            for i, line in enumerate(open(p, encoding="utf-8").read().splitlines(), 1) if len(line) > 110]
    assert not long, long


def test_no_file_over_450_lines_and_no_function_over_150():
    for path in CODE + glob.glob(os.path.join(ROOT, "tests", "*.py")):
        text = open(path, encoding="utf-8").read()
        assert text.count("\n") <= 450, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 150, (path, node.name)


def test_each_stage_script_marks_the_lines_to_read_first():
    """One banner pair per learner's script, around the core: the loss and the update, or the judge."""
    for name in ("train_pretrain", "train_sft", "train_rm", "train_ppo", "train_grpo", "train_dpo", "label",
                 "evaluate"):
        lines = open(os.path.join(ROOT, f"{name}.py"), encoding="utf-8").read().splitlines()
        opens = [i for i, line in enumerate(lines) if line.strip().startswith(READ_FIRST_OPEN)]
        closes = [i for i, line in enumerate(lines) if line.strip().startswith(READ_FIRST_CLOSE)]
        assert len(opens) == len(closes) == 1 and 0 < closes[0] - opens[0] <= 80, name

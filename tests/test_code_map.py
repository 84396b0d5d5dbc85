"""The README's code map is true: every module is in it, and a row imports only from the rows below it."""
import ast
import glob
import os
import re

from tests.conftest import ROOT



def code_map_rows():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Code map"):]
    section = section[:section.index("\n## ", 3)]
    rows = []
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith(("| layer", "|---")):
            cells = line.split("|")
            rows.append(set(re.findall(r"`([^`]+?)`", cells[2])))
    return rows


def owner(rows, path):
    """The row of a file: an exact entry, its folder (`utils/regrowth/`, `models/`), or a glob (`prune_*.py`)."""
    for i, entries in enumerate(rows):
        for e in entries:
            name = e.split(" ")[0]
            if path == name or (name.endswith("/") and path.startswith(name)) or (
                    "*" in name and glob.fnmatch.fnmatch(path, name)):
                return i
            if name.startswith("utils/regrowth/") and path == "utils/regrowth/" + name.split("/")[-1]:
                return i
    return None


def module_file(dotted):
    for candidate in (dotted.replace(".", "/") + ".py", dotted.replace(".", "/") + "/__init__.py"):
        if os.path.isfile(os.path.join(ROOT, candidate)):
            return candidate
    return None


def imports_of(path):
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield module_file(f"{node.module}.{alias.name}") or module_file(node.module)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield module_file(alias.name)


def project_files():
    files = glob.glob("*.py", root_dir=ROOT) + glob.glob("utils/**/*.py", root_dir=ROOT, recursive=True)
    files += glob.glob("models/*.py", root_dir=ROOT) + glob.glob("data/*.py", root_dir=ROOT)
    return sorted(f for f in files if not f.endswith("__init__.py"))


def test_every_module_is_on_the_code_map():
    rows = code_map_rows()
    assert len(rows) >= 8
    missing = [f for f in project_files() if owner(rows, f) is None]
    assert not missing, f"not on the README's code map: {missing}"


def test_imports_point_down_the_code_map():
    rows = code_map_rows()
    upward = []
    for f in project_files():
        me = owner(rows, f)
        for target in imports_of(f):
            if target is None or target.endswith("__init__.py") or target == f:
                continue
            row = owner(rows, target)
            if row is not None and row < me:
                upward.append(f"{f} (row {me}) imports {target} (row {row})")
    assert not upward, "\n".join(upward)

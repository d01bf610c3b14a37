"""The package's shape: modules with one job each, one version, one list of dependencies."""

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import re
from pathlib import Path

import pytest
import torch

import llm_lib

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400


def test_no_module_is_longer_than_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "llm_lib").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules by concept (at most {MAX_MODULE_LINES} lines each): {long}"


def test_the_installed_version_and_dependencies_come_from_one_place_each():
    meta = importlib.metadata.metadata("llm_lib")
    assert meta["Version"] == llm_lib.__version__
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    wanted = sorted(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    installed = sorted(r for r in importlib.metadata.requires("llm_lib") if "extra ==" not in r)
    assert installed == wanted
    assert not [w for w in wanted if "==" in w], "ranges, never pins"


def test_every_subpackage_is_found_and_urls_are_given():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == ["llm_lib*"]
    assert {"Homepage", "Repository", "Issues"} <= set(config["project"]["urls"])
    folders = {p.parent for p in (ROOT / "llm_lib").rglob("*.py")}
    assert all((f / "__init__.py").exists() for f in folders), "a folder without __init__.py is not a package"


MOVED = {  # names chapters import from llm_lib.train, now at home in their own modules
    "plot_losses": "llm_lib.viz",
    "save_checkpoint": "llm_lib.checkpoints",
    "load_checkpoint": "llm_lib.checkpoints",
    "checkpoint_path": "llm_lib.checkpoints",
    "load_or_pretrain": "llm_lib.pretraining",
    "PretrainRecipe": "llm_lib.pretraining",
    "weights_digest": "llm_lib.distributed",
    "DistributedInfo": "llm_lib.distributed",
}


@pytest.mark.parametrize("name", sorted(MOVED))
def test_moved_names_are_still_importable_from_train(name):
    from llm_lib import train

    assert getattr(train, name) is getattr(importlib.import_module(MOVED[name]), name)
    assert name in dir(train)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        train.nothing_here  # noqa: B018


def test_chapters_import_only_names_that_exist():
    import ast
    import json

    missing = []
    for nb in sorted((ROOT / "chapters").glob("*.ipynb")):
        for cell in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            python = re.sub(r"^(\s*)[%!].*$", r"\1pass", source, flags=re.M)  # IPython magics
            for node in ast.walk(ast.parse(python)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llm_lib"):
                    module = importlib.import_module(node.module)
                    missing += [f"{nb.name}: {node.module}.{a.name}" for a in node.names
                                if not hasattr(module, a.name)
                                and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
    assert not missing


def test_every_module_imports():
    for info in pkgutil.walk_packages(llm_lib.__path__, "llm_lib."):
        importlib.import_module(info.name)


def test_eval_mode_restores_the_mode_it_found():
    from llm_lib.model import eval_mode

    layer = torch.nn.Dropout(0.5)
    for start in (True, False):
        layer.train(start)
        with eval_mode(layer) as inside:
            assert inside is layer and not layer.training
        assert layer.training is start
        with pytest.raises(RuntimeError), eval_mode(layer):
            raise RuntimeError("the body failed")
        assert layer.training is start

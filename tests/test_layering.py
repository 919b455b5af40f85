"""Keeps the import directions of the house style (STYLE.md, "Layers") honest.

* Flax only in `jax_rcnn/modeling/`, `jax_rcnn/training*`, `jax_rcnn/checkpoint/` (and the
  entry points that build models: `predictor.py`, `demo.py`, `export.py` use `modeling`, not
  Flax itself);
* `pallas_kernels` is a leaf: it never imports `jax_rcnn`;
* only `jax_rcnn/kernels.py` imports `pallas_kernels` (the one dispatch point);
* `modeling/` never imports the host side (`data/`, `evaluation/`) nor the wiring
  (`meta_arch/`): networks do not know how they are wired;
* `meta_arch/` (the wiring of stages) imports no Flax (covered above), no host side and no
  training code;
* the geometry modules (`jax_rcnn/*.py` pure functions) import neither networks nor wiring;
* `data/` and `evaluation/` (host side) never import Flax or `modeling/`;
* `config_from_detectron2` builds on `config`, which does not import it at import time.
"""

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAX_OK = ("jax_rcnn/modeling/", "jax_rcnn/training", "jax_rcnn/checkpoint/")


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            # Relative imports resolve inside the file's own package.
            pkg = path.relative_to(ROOT).parent.parts[
                : len(path.relative_to(ROOT).parts) - node.level
            ]
            base = ".".join(pkg + ((node.module,) if node.module else ()))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _files(package: str) -> list[pathlib.Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _rel(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _hits(names: set[str], prefix: str) -> list[str]:
    return sorted(n for n in names if n == prefix or n.startswith(prefix + "."))


def test_packages_exist():
    assert _files("jax_rcnn") and _files("pallas_kernels")


@pytest.mark.parametrize("path", _files("jax_rcnn"), ids=_rel)
def test_flax_only_where_parameters_live(path):
    if _rel(path).startswith(FLAX_OK):
        return
    assert not _hits(_imports(path), "flax"), f"{_rel(path)} imports Flax outside {FLAX_OK}"


@pytest.mark.parametrize("path", _files("pallas_kernels"), ids=_rel)
def test_pallas_kernels_is_a_leaf(path):
    assert not _hits(_imports(path), "jax_rcnn"), f"{_rel(path)} imports jax_rcnn"


@pytest.mark.parametrize("path", _files("jax_rcnn"), ids=_rel)
def test_one_dispatch_point_for_kernels(path):
    if _rel(path) == "jax_rcnn/kernels.py":
        return
    assert not _hits(_imports(path), "pallas_kernels"), (
        f"{_rel(path)} imports pallas_kernels; go through jax_rcnn.kernels"
    )


@pytest.mark.parametrize("path", _files("jax_rcnn/modeling"), ids=_rel)
def test_modeling_does_not_import_host_side(path):
    names = _imports(path)
    bad = _hits(names, "jax_rcnn.data") + _hits(names, "jax_rcnn.evaluation")
    assert not bad, f"{_rel(path)} imports host-side modules {bad}"


@pytest.mark.parametrize("path", _files("jax_rcnn/modeling"), ids=_rel)
def test_networks_do_not_import_the_wiring(path):
    bad = _hits(_imports(path), "jax_rcnn.meta_arch")
    assert not bad, f"{_rel(path)} imports {bad}; modeling/ holds only networks"


@pytest.mark.parametrize("path", _files("jax_rcnn/meta_arch"), ids=_rel)
def test_wiring_imports_no_host_side_or_training(path):
    names = _imports(path)
    bad = [h for p in ("jax_rcnn.data", "jax_rcnn.evaluation", "jax_rcnn.training")
           for h in _hits(names, p)]  # fmt: skip
    assert not bad, f"{_rel(path)} imports {bad}"


GEOMETRY = ("anchors", "boxes", "losses", "masks", "matching", "poolers", "postprocess",
            "proposals", "sampling", "targets")  # fmt: skip


def test_meta_arch_package_is_covered():
    assert {p.name for p in _files("jax_rcnn/meta_arch")} >= {
        "__init__.py", "common.py", "rpn.py", "roi_heads.py", "dense_head.py", "rcnn.py",
        "retinanet.py",
    }  # fmt: skip


@pytest.mark.parametrize("name", GEOMETRY)
def test_geometry_imports_no_networks_or_wiring(name):
    names = _imports(ROOT / "jax_rcnn" / f"{name}.py")
    bad = _hits(names, "jax_rcnn.modeling") + _hits(names, "jax_rcnn.meta_arch")
    assert not bad, f"jax_rcnn/{name}.py imports {bad}"


@pytest.mark.parametrize("path", _files("jax_rcnn/data") + _files("jax_rcnn/evaluation"), ids=_rel)
def test_host_side_imports_no_model_code(path):
    names = _imports(path)
    bad = _hits(names, "flax") + _hits(names, "jax_rcnn.modeling")
    assert not bad, f"{_rel(path)} (host side) imports {bad}"


def test_config_does_not_import_the_detectron2_translation_at_import_time():
    """`config_from_detectron2` imports `config`; `config` reaches back only inside its module
    `__getattr__` (the re-export of `from_detectron2`), never at import time."""
    tree = ast.parse((ROOT / "jax_rcnn" / "config.py").read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
    names |= {f"{n.module}.{a.name}" for n in top if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "ml_collections" in names  # the parse sees config.py's imports
    assert not _hits(names, "jax_rcnn.config_from_detectron2")
    assert "jax_rcnn.config" in _imports(ROOT / "jax_rcnn" / "config_from_detectron2.py")


def test_the_checker_sees_violations(tmp_path, monkeypatch):
    """The parser itself must catch both absolute and relative imports."""
    pkg = tmp_path / "jax_rcnn" / "modeling"
    pkg.mkdir(parents=True)
    bad = pkg / "x.py"
    bad.write_text("from ..data import coco\nimport flax.linen as nn\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    names = _imports(bad)
    assert "jax_rcnn.data.coco" in names and "flax.linen" in names

"""The runtime's public API (tumor_edge/runtime/__init__.py): cheap to import, every name real, the lazy table and
the type-checking imports (what grimp and import-linter see) saying the same thing, and `Bundle` doing what its
docstring says on a real ONNX bundle."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import tumor_edge.runtime as runtime
from tests.runtime.models import make_bundle, save_quadrant
from tumor_edge.errors import BundleIntegrityError, ModelError

INIT = Path(runtime.__file__)


def _type_checking_imports() -> dict[str, str]:
    """name -> module of every import under `if TYPE_CHECKING:` in the runtime's __init__."""
    tree = ast.parse(INIT.read_text())
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom), ast.dump(imp)
                for alias in imp.names:
                    found[alias.asname or alias.name] = imp.module
    return found


def test_importing_the_runtime_loads_nothing_heavy():
    """Cold start: the package itself imports no numpy, Pillow, onnxruntime, nor any runtime module."""
    code = ("import sys, tumor_edge.runtime; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'PIL', 'onnxruntime', 'onnx') or m.startswith('tumor_edge.runtime.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_all_lazy_table_and_type_checking_imports_agree():
    assert runtime.__all__ == sorted([*runtime._EXPORTS, *runtime._MODULES])
    typed = _type_checking_imports()
    expected = dict(runtime._EXPORTS)
    for name, module in runtime._MODULES.items():  # `from tumor_edge.runtime import readers`
        parent, _, child = module.rpartition(".")
        assert child == name
        expected[name] = parent
    assert typed == expected


@pytest.mark.parametrize("name", sorted(runtime._EXPORTS))
def test_every_public_name_is_the_defining_modules_object(name):
    module = runtime._EXPORTS[name]
    if importlib.util.find_spec(module) is None:  # a module this tree does not have yet: a clear ImportError
        with pytest.raises(ImportError, match=rf"tumor_edge\.runtime\.{name} needs {module}"):
            getattr(runtime, name)
        return
    assert getattr(runtime, name) is getattr(importlib.import_module(module), name)


def test_public_modules_resolve_or_say_what_is_missing():
    for name, module in runtime._MODULES.items():
        if importlib.util.find_spec(module) is None:
            with pytest.raises(ImportError, match=rf"needs {module}"):
                getattr(runtime, name)
        else:
            assert getattr(runtime, name) is importlib.import_module(module)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'record_reference'"):
        runtime.record_reference  # noqa: B018  (the writer belongs to export, not the runtime)
    assert not hasattr(runtime, "no_such_name")


def test_bundle_opens_checks_and_classifies(tmp_path):
    from tumor_edge.runtime import Bundle

    folder = make_bundle(tmp_path / "b")
    bundle = Bundle.open(folder)
    assert bundle.models == list(bundle.metadata.models) and bundle.classes == bundle.metadata.classes
    assert [p.name for p in bundle.check()] == bundle.models
    image = save_quadrant(tmp_path / "q2.png", 2)
    assert bundle.classifier(bundle.models[0]).predict(image).label == bundle.classes[2]
    assert bundle.verify(choose=False).lines[0].startswith("schema: ok")

    model = folder / bundle.models[0]
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    model.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="sha256"):
        bundle.check()


def test_bundle_open_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    from tumor_edge.runtime import Bundle

    with pytest.raises(ModelError, match="not a tumor-edge bundle"):
        Bundle.open(tmp_path)

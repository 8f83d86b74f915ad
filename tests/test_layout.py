"""The package's layout rules: no module uses another module's private names."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_private_imports.py"


def load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_private_imports", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_module_uses_another_modules_private_names() -> None:
    found, gone = load_checker().check()
    assert found == [], "\n".join(found)
    assert gone == [], "known exceptions no longer used: " + ", ".join(gone)


def test_the_check_finds_private_names_and_allows_private_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checker = load_checker()
    package = tmp_path / "ndax_async"
    (package / "_wire").mkdir(parents=True)
    (package / "bulk").mkdir()
    files = {
        "__init__.py": "from ._version import __version__\n",
        "_version.py": "__version__ = '1'\n",
        "client.py": "def _prepare(): ...\ndef prepare(): ...\n_WRITES = {}\n",
        "_wire/__init__.py": "",
        "_wire/writes.py": "def _hidden(): ...\n",
        "bulk/__init__.py": "from . import _rows\n",
        "bulk/_rows.py": "",
        "bulk/engine.py": (
            "from __future__ import annotations\n"
            "from .._wire import writes\n"
            "from .._wire.writes import _hidden\n"
            "from ..client import prepare, _WRITES\n"
            "from .. import client\n"
            "import ndax_async.client as c\n"
            "client._prepare()\n"
            "c._prepare()\n"
            "writes.__name__\n"
        ),
    }
    for name, text in files.items():
        (package / name).write_text(text)
    monkeypatch.setattr(checker, "ROOT", tmp_path)
    found, _ = checker.check(tmp_path)
    assert found == [
        "ndax_async/bulk/engine.py:3: from ndax_async._wire.writes import _hidden",
        "ndax_async/bulk/engine.py:4: from ndax_async.client import _WRITES",
        "ndax_async/bulk/engine.py:7: ndax_async.client._prepare",
        "ndax_async/bulk/engine.py:8: ndax_async.client._prepare",
    ]

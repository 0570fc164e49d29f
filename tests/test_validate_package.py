"""``mpcompile.validate`` is a plain function; ``mpcompile/validate/`` a plain package of its modules."""

from __future__ import annotations

import subprocess
import sys
import types

import mpcompile


def test_the_top_level_name_is_the_function_and_stays_so():
    from mpcompile.validate import SCHEMA, latency  # loading the package and a module of it
    from mpcompile.validate.api import validate as api_validate

    assert SCHEMA.startswith("mpcompile.validate/")
    assert isinstance(latency, types.ModuleType)
    assert isinstance(mpcompile.validate, types.FunctionType)
    assert type(sys.modules["mpcompile.validate"]) is types.ModuleType
    assert sys.modules["mpcompile.validate"].validate is api_validate


def test_the_function_calls_the_api(monkeypatch):
    from mpcompile.validate import api

    calls = []
    monkeypatch.setattr(api, "validate", lambda *args, **options: calls.append((args, options)) or "result")
    assert mpcompile.validate("a.onnx", "b.onnx", runs=0) == "result"
    assert calls == [(("a.onnx", "b.onnx"), {"runs": 0})]


def test_a_fresh_interpreter_importing_a_module_first_still_gets_the_function():
    code = (
        "import types\n"
        "from mpcompile.validate.tolerances import Tolerance\n"
        "import mpcompile\n"
        "assert isinstance(mpcompile.validate, types.FunctionType), mpcompile.validate\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

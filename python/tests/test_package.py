"""The installed package: typed (stubs shipped), documented, abi3."""

from __future__ import annotations

import inspect
from pathlib import Path

import tollgate
from tollgate import _native


def test_the_wheel_ships_its_stubs_and_the_typed_marker():
    root = Path(tollgate.__file__).parent
    assert (root / "py.typed").is_file()
    stub = (root / "_native.pyi").read_text()
    for name in ("class Bridge", "class Limiter", "class NativePermit", "def acquire_blocking"):
        assert name in stub
    assert ".abi3." in Path(_native.__file__).name


def test_every_public_name_and_method_has_a_docstring():
    for name in tollgate.__all__:
        obj = getattr(tollgate, name)
        assert inspect.getdoc(obj), name
        if inspect.isclass(obj) and obj.__module__.startswith("tollgate"):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
                    assert inspect.getdoc(member), f"{name}.{attr}"

"""Names a package hands on, loaded on first use (PEP 562): a light submodule (methods/abu/recipes.py, which the command
line reads to build its flags) can be imported without its package's heavy names pulling in torch."""
from __future__ import annotations

from importlib import import_module


def lazy_names(package: str, homes: dict[str, str]):
    """A module __getattr__ for `package` that imports homes[name] (a relative module) when `name` is first read."""
    def __getattr__(name: str):
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(homes[name], package), name)
    return __getattr__

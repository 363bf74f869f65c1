"""The ``unlearn-fast`` command: main.py (the verbs), evaluate.py (``unlearn-fast evaluate``), arguments.py."""
from .main import _prepare_settings, _read_indices, build_parser, main

__all__ = ["_prepare_settings", "_read_indices", "build_parser", "main"]

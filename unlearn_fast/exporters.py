"""Scores in dattri's and TRAK's layouts: unlearn_fast.interop.exporters, under the name users import."""
from .interop.exporters import FORMATS, ExportError, export_dattri, export_scores, export_trak

__all__ = ["FORMATS", "ExportError", "export_dattri", "export_scores", "export_trak"]

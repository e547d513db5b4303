"""lightning_sep: separating sounds that were never recorded alone (NES, MaskNet, WeakSep, CoSep)."""

__version__ = "0.1.0"

"""The methods, by the name experiment configs use in ``method:``."""
from __future__ import annotations

from .base import SeparationModule
from .masknet import MaskNet
from .nes import NES
from .supervised import Supervised

METHODS: dict[str, type[SeparationModule]] = {m.name: m for m in (Supervised, NES, MaskNet)}
SCHEMAS = {name: m.Config for name, m in METHODS.items()}

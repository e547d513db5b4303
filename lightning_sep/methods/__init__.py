"""The methods, by the name experiment configs use in ``method:``."""
from __future__ import annotations

from .base import SeparationModule
from .classifier import Classifier
from .glom import GLOM
from .masknet import MaskNet
from .nes import NES
from .supervised import Supervised
from .weaksep import WeakSep

METHODS: dict[str, type[SeparationModule]] = {m.name: m for m in (Supervised, NES, GLOM, MaskNet, Classifier, WeakSep)}
SCHEMAS = {name: m.Config for name, m in METHODS.items()}

"""Fusion strategies, selected by name: ``build_fusion(name, config, dims)``.

Each strategy module registers itself with ``@register_fusion("name")``; importing this package registers them
all. A new strategy is a new module here plus one import line below — callers never change.
"""

from trainer.model.fusion import cross, early, late, mgips, mpcfn, smcl, text  # noqa: F401  (registration)
from trainer.model.fusion.base import (
    EncoderDims,
    Fusion,
    FusionInputs,
    FusionOutput,
    build_fusion,
    fusion_names,
    register_fusion,
)

__all__ = ["EncoderDims", "Fusion", "FusionInputs", "FusionOutput", "build_fusion", "fusion_names", "register_fusion"]

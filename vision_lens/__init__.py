"""vision_lens: tuned lenses on every block of vision models, the control for LLM lens studies.

The public API, loaded on first use (``import vision_lens`` stays light)::

    import vision_lens as vl
    run = vl.run_pipeline(model="cifar:resnet20", weights="resnet20.th", data="cifar10", out="runs/r20")
    vl.plotting.layerwise(run, "acc")             # run: a RunResults, as vl.load_results("runs/r20") gives
    vl.control("path/to/tuned-lens-eval-output")  # an LLM's lens results among the vision controls
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> (module, attribute or None for the module itself)
_EXPORTS = {
    "create_adapter": ("adapters", "create_adapter"),
    "ModelAdapter": ("adapters", "ModelAdapter"),
    "Preprocessing": ("adapters", "Preprocessing"),
    "LogitLens": ("lenses", "LogitLens"),
    "TunedLens": ("lenses", "TunedLens"),
    "SharedTunedLens": ("lenses", "SharedTunedLens"),
    "LinearProbe": ("lenses", "LinearProbe"),
    "TunedLensRecipe": ("fit", "TunedLensRecipe"),
    "load_results": ("artifacts", "load_results"),
    "control": ("controls", "control"),
    "RunResults": ("artifacts", "RunResults"),
    "run_pipeline": ("pipeline", "run_pipeline"),
    "plotting": ("plotting", None),
    "analysis": ("analysis", None),
    "signatures": ("signatures", None),
    "compare": ("compare", None),
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vision_lens' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = importlib.import_module(f".{module}", __name__)
    value = value if attribute is None else getattr(value, attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

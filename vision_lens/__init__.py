"""vision_lens: tuned lenses on every block of vision models, the control for LLM lens studies."""

__version__ = "0.1.0"

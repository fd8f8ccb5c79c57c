"""What goes wrong between ``--model``/``--weights`` and a working adapter; torch-free, so the registry can raise it."""

from __future__ import annotations

from ..errors import UserError


class WeightsError(UserError, ValueError):
    """A checkpoint cannot be used with the requested architecture, or ``--weights pretrained`` has nothing to load."""


class ModelError(UserError, ValueError):
    """``--model`` names no model, or one that vision-lens cannot read; the message says which ones it can."""


class UnknownModelError(ModelError):
    """No registered architecture takes the requested name; the message names the near matches."""


class ClassMatchError(UserError, ValueError):
    """A dataset's classes cannot be matched to the model's outputs; the message lists what differs."""

"""Gearman adapter (``gearman://``) over pygearman: see :mod:`.transport` and docs/gearman.md."""

from .transport import CallFailed, GearmanTransport

__all__ = ["CallFailed", "GearmanTransport"]

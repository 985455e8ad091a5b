"""Losses: ranking losses (`ranking`) and cascade training methods (`cascade`)."""

from cascadejax.losses.ranking import safe_reduce, sigmoid_bce_loss

__all__ = ["safe_reduce", "sigmoid_bce_loss"]

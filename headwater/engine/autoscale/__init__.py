"""Lag-driven autoscaling: the controller's configuration and decisions (the runner applies them)."""

from headwater.engine.autoscale.config import AutoscaleConfig
from headwater.engine.autoscale.controller import Decision, ScalingController, Signals

__all__ = ["AutoscaleConfig", "Decision", "ScalingController", "Signals"]

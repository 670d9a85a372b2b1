"""The planner: logical steps → :class:`~headwater.engine.plan.PhysicalPlan` (stages, edges, operator factories).

:func:`plan` is the entry point; :mod:`~headwater.planner.rules` holds the rewrite and projection rules and
:mod:`~headwater.planner.operators` the registry that maps each step type to its operator.
"""

from headwater.planner.planner import plan

__all__ = ["plan"]

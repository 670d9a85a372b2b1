"""Names of the output ports of steps and operators (see :attr:`headwater.logical.base.Step.output_ports`).

Every step has a main output; some have named side outputs, which a consumer reads with a side-output step
(``stream.late_records()`` reads a window's ``"late"`` port). An operator returns its side outputs by port
name from ``take_side_outputs()``; an edge of the physical plan carries the port it reads (``Edge.src_port``).
Dead letters and quarantined records are further ports on the same mechanism.
"""

MAIN_PORT = "main"
"""Every step's regular output."""

LATE_PORT = "late"
"""A window's input records that were too late for every window they belong to."""

DEAD_LETTER_PORT = "dead_letters"
"""A source's records that it could not decode or convert, as rows of
:data:`headwater.core.dead_letters.DEAD_LETTER_SCHEMA` (not input rows: the raw payload with the reason)."""

INVALID_PORT = "invalid"
"""A validation step's input rows that failed a rule, with the added columns ``rule`` and ``reason``."""

FINDINGS_PORT = "findings"
"""A validation step's statistical findings (drift of a column's shape), rows of
:data:`headwater.rules.FINDINGS_SCHEMA` (not input rows)."""

INPUT_ROW_PORTS = frozenset({LATE_PORT, INVALID_PORT})
"""Side ports whose rows are the step's *input* rows (so a step whose such port is read needs its whole input: no
projection is pushed through it). Dead letters are not input rows: they carry the raw payload."""

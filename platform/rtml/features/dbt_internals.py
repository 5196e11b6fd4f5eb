"""dbt's internals that rtml changes, in one place.

* The source of a behaviour flag (``dbt_common.behavior_flags.BehaviorFlagRendered._default_source``).
  For every flag of every adapter dbt creates, dbt-common computes a default source, even for a flag
  that names its own, with ``inspect.stack()``: it reads the source lines of every frame of the call
  stack and looks each frame's module up by file name across ``sys.modules``. In a process that has
  imported a lot (a test worker, a Dagster run with dagster-dbt's in-process adapter) with a deep stack,
  that is tens of milliseconds per flag: py-spy put 26 s of the ``make test`` workers' CPU there.
  :func:`stop_flag_source_stack_walk` swaps in a walk up the frames that reads each one's module name
  (``f_globals["__name__"]``): the same answer, microseconds.

Used by ``rtml.features.dbt.run_dbt`` (dbt in this process) and ``rtml.defs.features.assets``
(dagster-dbt's adapter). dbt-common comes pinned with dbt-core (uv.lock); tests/test_private_apis.py
fails by name when a new version changes it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def flag_source() -> str:
    """The module that created the behaviour flag: the first caller outside ``behavior_flags``."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if name and name != "dbt_common.behavior_flags":
            return str(name)
        frame = frame.f_back  # type: ignore[assignment]
    return "Unknown"


def stop_flag_source_stack_walk() -> None:
    """dbt-common names a behaviour flag's default source with :func:`flag_source`. Idempotent."""
    from dbt_common.behavior_flags import BehaviorFlagRendered

    global stack_walking_source
    if stack_walking_source is None:
        stack_walking_source = BehaviorFlagRendered._default_source
    BehaviorFlagRendered._default_source = staticmethod(flag_source)  # type: ignore[method-assign]


stack_walking_source: Callable[[], str] | None = None
"""dbt-common's own ``_default_source``, once replaced (tests/test_private_apis.py compares the two)."""

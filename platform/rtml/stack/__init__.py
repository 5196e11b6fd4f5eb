"""The local stack: embedded PostgreSQL and Redis when no URL is set, DAGSTER_HOME (see ``stack``)."""

from rtml.stack.local import ComponentStatus, LocalStack, StackError, StackInfo, StackNotRunningError

__all__ = ["ComponentStatus", "LocalStack", "StackError", "StackInfo", "StackNotRunningError"]

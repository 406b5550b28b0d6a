"""The embedded default platform the demo, the tests and the benchmarks run against."""

from runbooks_sandbox.environment import Sandbox, SandboxState, parse_size

__all__ = ["Sandbox", "SandboxState", "parse_size"]

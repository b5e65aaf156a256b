"""Built-in job types. Importing this package registers them in the default
registry (`worker.registry.default_registry`); `register(registry)` adds them to
another one (tests build fresh registries)."""
from worker.jobs.builtin import BUILTINS, register

__all__ = ["BUILTINS", "register"]

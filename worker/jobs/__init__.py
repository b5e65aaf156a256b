"""Built-in job types, one module per family (text, math, files, http, images,
data, archives, email, reports, batch, scrape, logs, maintenance, health; util.*
in builtin.py). Importing this package registers them in the default registry
(`worker.registry.default_registry`); `register(registry)` adds them to another
one (tests build fresh registries)."""
from worker.jobs.builtin import BUILTINS, register

__all__ = ["BUILTINS", "register"]

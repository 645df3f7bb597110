"""Lambda SnapStart (template.yaml turns it on for create_run and the step executor): the state an initialised
environment holds that must not be shared by every environment restored from one snapshot.

What init leaves in the snapshot: imported modules, the resolver, the logger, the tracer, and the `random` module's
generator, seeded from the OS once at interpreter start. Restored from one snapshot, every environment would draw the
same retry jitter (`engine.executor`, `engine.callbacks`), which exists to spread retries apart: each environment
reseeds it from the OS after restore. Nothing else unique is made at init: ids and secrets come from `uuid.uuid4` and
`secrets` (the OS generator on every call, which Lambda reseeds on restore), and the services (database connections,
the secret, Sentry) are built on the first invocation, after restore.
"""

from __future__ import annotations

import random

_registered = False


def reseed() -> None:
    random.seed()  # from os.urandom


def register_restore_hooks() -> bool:
    """Registers `reseed` with the runtime's SnapStart hooks (the `snapshot_restore_py` library the Python managed
    runtimes include); False where there is no such runtime (locally, in tests). Once per process."""
    global _registered
    if _registered:
        return True
    try:
        from snapshot_restore_py import register_after_restore
    except ImportError:
        return False
    register_after_restore(reseed)
    _registered = True
    return True

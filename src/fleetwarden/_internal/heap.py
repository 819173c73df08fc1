"""Keeping the cyclic garbage collector off the request path of a long-running process.

CPython's collector walks every tracked object on a full (generation 2) collection. A
``fleetwarden up`` process holds a large, permanent heap after start-up (modules,
classes, the app and its routes, SQLAlchemy metadata, compiled statements); on the
development VM a full collection over the 100,000 objects of an issuance process took
about 50 ms, paid by whichever request happened to trigger it, and batch issuance
triggers one every few thousand certificates (each batch keeps thousands of objects
alive long enough to be promoted). ``gc.freeze`` moves what exists at that point into
a permanent generation that collections skip; objects are still freed by reference
counting as before, only cycles among the frozen ones are never collected, which is
why a collection runs first.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then exclude every object alive now from future collections; call
    when start-up is done. Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw_heap() -> None:
    """Undo :func:`freeze_startup_heap` (the service stopped; a process that serves
    again, such as a test run, must not keep every earlier start-up's objects frozen)."""
    gc.unfreeze()

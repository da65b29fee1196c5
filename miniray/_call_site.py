"""Where a put or a task call was made, for ``miniray memory`` (opt-in).

As Ray's ``RAY_record_ref_creation_sites``: with it set to 1 (or
``MINIRAY_record_ref_creation_sites``) in a driver's or worker's
environment when it connects, ``put()`` and ``.remote()`` send the node the
file:line of the first frame outside miniray (a ``CALL_SITE`` message,
queued with the PUT/SUBMIT that follows).  Off, nothing is done at all: the
callers test ``CoreClient.record_sites`` first, and no frame is walked.
"""
from __future__ import annotations

import os
import sys

from ._protocol import M

__all__ = ["ENV_VARS", "enabled", "user_call_site", "note"]

ENV_VARS = ("RAY_record_ref_creation_sites", "MINIRAY_record_ref_creation_sites")
_OFF = ("", "0", "false", "no", "off")


def enabled() -> bool:
    """Is call-site recording asked for in this process's environment?"""
    for name in ENV_VARS:
        value = os.environ.get(name)
        if value is not None and value.strip().lower() not in _OFF:
            return True
    return False


def user_call_site() -> str:
    """``file:line`` of the innermost frame that is not miniray's own."""
    f = sys._getframe(1)
    while f is not None:
        name = f.f_globals.get("__name__") or ""
        if name != "miniray" and not name.startswith("miniray."):
            return f"{f.f_code.co_filename}:{f.f_lineno}"
        f = f.f_back
    return "(unknown)"


def note(client, object_or_task_id: bytes) -> None:
    """Tell the node where the object (or task) with this id is being made;
    queued, so it leaves with the PUT/SUBMIT right after it."""
    client.send_later((M.CALL_SITE, object_or_task_id[:14], user_call_site()))

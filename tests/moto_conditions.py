"""Model S3's atomic conditional requests in moto, for tests of racing writers.

moto 5.2.5 evaluates a PutObject's ``If-None-Match``/``If-Match`` (and a DeleteObject's
``If-Match``) and then stores the object in a second step, without a lock: two racing
conditional PUTs can both pass their condition. S3 itself decides them atomically (one wins,
the other gets 412 or 409). Tests that race writers serialise moto's two handlers to model S3;
the handlers' own condition checks are unchanged.
"""

from __future__ import annotations

import functools
import threading


def serialise_conditional_requests(monkeypatch) -> None:
    """Run moto's PutObject and DeleteObject handlers one at a time (in-process mocks and the
    threaded moto server alike) until the test ends."""
    from moto.s3.responses import S3Response

    lock = threading.Lock()
    for name in ("put_object", "delete_object"):
        original = getattr(S3Response, name)

        @functools.wraps(original)
        def handler(self, *args, _original=original, **kwargs):
            with lock:
                return _original(self, *args, **kwargs)

        monkeypatch.setattr(S3Response, name, handler)

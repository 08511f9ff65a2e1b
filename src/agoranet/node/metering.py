"""What the payment middleware and the inference service share for one request.

The middleware tokenises the request once to price it and puts the result in a
:class:`Meter` in a context variable; the service takes the prepared request
from there instead of tokenising again, records the usage when generation
finishes, asks for running-receipt frames as content frames go out
(``stream_progress``, given how many were sent), and for the final SSE frames
(the signed receipt) before ``data: [DONE]``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from agoranet.engines.base import Finish, Prepared

__all__ = ["Meter", "current_meter", "metered"]

FinishFrames = Callable[[Finish], Awaitable[list[bytes]]]
ProgressFrames = Callable[[int], Awaitable[list[bytes]]]


@dataclass
class Meter:
    prepared: Prepared | None = None
    usage: Finish | None = None
    stream_finish: FinishFrames | None = None
    stream_progress: ProgressFrames | None = None
    taken: bool = field(default=False)

    def take_prepared(self) -> Prepared | None:
        """The prepared request, once (a second prepare in the same request tokenises)."""
        if self.taken:
            return None
        self.taken = True
        return self.prepared


_METER: ContextVar[Meter | None] = ContextVar("agoranet_meter", default=None)


def current_meter() -> Meter | None:
    return _METER.get()


class metered:
    """``with metered(meter):`` makes ``meter`` current for the code inside."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def __enter__(self) -> Meter:
        self._token = _METER.set(self.meter)
        return self.meter

    def __exit__(self, *exc: object) -> None:
        _METER.reset(self._token)

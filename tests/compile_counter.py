"""One counter of XLA compilations for the tests that check compiled programs are reused."""

from __future__ import annotations

import jax

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts XLA compilations through jax.monitoring."""

    def __init__(self) -> None:
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if event == _COMPILE_EVENT:
            self.count += 1


COUNTER = CompileCounter()

"""Where JAX time goes: tracing, lowering and compiling vs running."""

from __future__ import annotations

from typing import Any

import jax


class CompileClock:
    """Counts JAX's tracing + lowering + compilation seconds and XLA compilations.

    Counting starts at construction and ends at :meth:`stop` (or the end of a
    ``with`` block); read differences of ``seconds`` / ``compiles`` to time
    one call, e.g. to see that a repeated call did not compile again.
    ``compiles`` counts every program built for a call jit had not cached in
    memory, including those loaded from the persistent compilation cache;
    ``cache_hits`` counts the loads among them (``seconds`` includes loading).
    """

    def __init__(self) -> None:
        self.seconds, self.compiles, self.cache_hits, self._on = 0.0, 0, 0, True
        jax.monitoring.register_event_duration_secs_listener(self)
        jax.monitoring.register_event_listener(self._event)

    def __call__(self, event: str, duration: float, **_: Any) -> None:
        if self._on and event.startswith("/jax/core/compile/"):
            self.seconds += duration
            self.compiles += event.endswith("backend_compile_duration")

    def _event(self, event: str, **_: Any) -> None:
        if self._on and event == "/jax/compilation_cache/cache_hits":
            self.cache_hits += 1

    def stop(self) -> None:
        # once (unregistering an unknown listener is an error), and only where jax has a
        # public way (0.8.1 on): before that a stopped clock stays registered, silent
        if self._on and hasattr(jax.monitoring, "unregister_event_listener"):
            jax.monitoring.unregister_event_duration_listener(self)
            jax.monitoring.unregister_event_listener(self._event)
        self._on = False

    def __enter__(self) -> CompileClock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

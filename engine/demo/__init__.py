"""The demo: a viewer page and a host console served by the engine, for one seeded room.

``./dev run`` (``liveroom serve`` on the embedded defaults, where ``demo.enabled`` is true)
prints :func:`demo_line`; its URL opens a working room in the browser. The pages are plain
HTML and ES modules in ``static/`` that speak protocol v1 through the JS client
(``static/liveroom.mjs``); their routes and endpoints are in :mod:`engine.demo.routes`.
"""

from __future__ import annotations

import ipaddress

from engine.config import Config
from engine.demo.routes import Demo

__all__ = ["Demo", "demo_line", "demo_warning"]


def demo_line(config: Config, service_port: int) -> str:
    """The start-up line naming the demo's URLs, e.g. ``demo: open
    http://127.0.0.1:8766/demo/ (host console: http://127.0.0.1:8766/demo/host)``."""
    host = config.service.host
    if host in ("0.0.0.0", "::"):  # listening everywhere: this machine's browser uses loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    base = f"http://{host}:{service_port}/demo"
    return f"demo: open {base}/ (host console: {base}/host)"


def demo_warning(config: Config) -> str | None:
    """A warning when the demo (viewer tokens for anyone) is reachable beyond this machine."""
    host = config.service.host
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        local = False
    if local:
        return None
    return (
        f"demo.enabled: the demo pages mint viewer tokens for anyone who reaches "
        f"{host}:{config.service.port}; set LIVEROOM_DEMO_ENABLED=false outside development"
    )

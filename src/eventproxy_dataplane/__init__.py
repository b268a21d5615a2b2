"""eventproxy_dataplane: a pure-Python reverse proxy that reads traefik-style dynamic configuration.

It imports nothing from ``eventproxy`` or ``jupyterhub``; it runs on asyncio or trio via anyio.
"""

__all__: list[str] = []

"""The /operator route: protocol, service and connections, roles, views, keys, sign-in throttle."""

__all__: list[str] = []

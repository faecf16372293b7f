"""The Quart-trio front end: HTTP routes and WebSocket endpoints over the services."""

from zajel.web.app import create_app

__all__ = ["create_app"]

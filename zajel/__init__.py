"""Zajel coordination server."""

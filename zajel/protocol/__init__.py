"""Sans-IO protocol layer: frames, messages, validation, limits and errors.

Nothing here imports trio or quart: every function is pure and every state class takes the
current time as an argument, so the whole layer is tested without an event loop.
"""

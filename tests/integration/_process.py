"""A real ``zajel serve`` process for tests of the command itself."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

LISTENING = re.compile(r"zajel listening on (http://127\.0\.0\.1:\d+)")


def clean_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("ZAJEL_")}


@asynccontextmanager
async def zajel_serve(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    fd_limits: tuple[int, int] | None = None,
) -> AsyncIterator[tuple[trio.Process, str]]:
    """``zajel serve --port 0 ARGS`` as a child process, and the URL it reports once listening.

    Its stderr (the logs) goes to ``tmp_path / "stderr.log"``. ``fd_limits``: the (soft, hard)
    limit of open files the process starts with.
    """

    def limit_files() -> None:
        if fd_limits is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, fd_limits)

    stderr = (tmp_path / "stderr.log").open("wb")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "zajel", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=tmp_path,
        env={**clean_environment(), **(env or {})},
        preexec_fn=limit_files if fd_limits is not None else None,
    )
    try:
        assert process.stdout is not None
        output = b""
        while (match := LISTENING.search(output.decode(errors="replace"))) is None:
            chunk = await process.stdout.receive_some()
            assert chunk, f"exited before listening: {output!r}"
            output += chunk
        yield process, match.group(1)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()
        stderr.close()

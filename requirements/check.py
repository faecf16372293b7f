"""Check that the installed packages satisfy what pyproject.toml asks for (runtime and the
``dev`` extra), so an install from a lock file that is older than pyproject.toml stops with one
clear line instead of failing later on an import. Run by ``make`` after installing."""

from __future__ import annotations

import importlib.metadata as metadata
import sys

from packaging.requirements import Requirement


def main() -> int:
    problems = []
    for text in metadata.requires("zajel") or []:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": "dev"}):
            continue  # another extra (bench) or another platform
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement.name} is not installed")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name} {version} is not {requirement.specifier}")
    for problem in problems:
        print(f"make: {problem}", file=sys.stderr)
    if problems:
        print(
            "make: the lock file does not match pyproject.toml; run `make lock` and commit it",
            file=sys.stderr,
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

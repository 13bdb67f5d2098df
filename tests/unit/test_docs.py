"""Every relative link in the project's Markdown resolves: the file exists, and an anchor names a heading
of that page (GitHub's anchors: lower case, punctuation dropped, spaces to hyphens)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[2]
PARSER = MarkdownIt("commonmark").enable("table")


def pages() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in listed.stdout.split() if not name.startswith("bench/results/")]


def anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def parsed(page: Path) -> tuple[set[str], list[str]]:
    """The page's heading anchors and its link targets."""
    tokens = PARSER.parse(page.read_text())
    anchors, links = set(), []
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            anchors.add(anchor("".join(child.content for child in tokens[i + 1].children or [])))
        for child in token.children or []:
            if child.type == "link_open":
                links.append(child.attrs["href"])
    return anchors, links


@pytest.mark.parametrize("page", pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    _, links = parsed(page)
    broken = []
    for link in links:
        if re.match(r"^[a-z]+:", link):
            continue
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif fragment and target.suffix == ".md" and fragment not in parsed(target)[0]:
            broken.append(f"{link}: no such heading")
    assert not broken, broken


def test_the_docs_index_links_every_page():
    _, links = parsed(ROOT / "docs" / "README.md")
    linked = {link.partition("#")[0] for link in links}
    assert {page.name for page in (ROOT / "docs").glob("*.md")} - {"README.md"} <= linked

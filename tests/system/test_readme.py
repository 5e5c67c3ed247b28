"""The README and docs/ stay true to the code and to each other.

The README is the short entry (at most 300 lines) and its option table is the one reference for
every flag; docs/ holds the rest. These checks keep the table in step with ``Settings`` (every
option, its variable and its default), every metric documented, and every relative link in the
README, docs/ and SECURITY.md pointing at a file and, with ``#``, at a heading that exists.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

import pytest

from proxy.ops.config import Settings, env_name, option_name

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: The Markdown files whose links must resolve.
PAGES = [README, ROOT / "SECURITY.md", *sorted(DOCS.glob("*.md"))]
MAX_README_LINES = 300

ROW = re.compile(r"^\| `(--[a-z0-9-]+)` \| `(PROXY_[A-Z0-9_]+)` \| (.+?) \| (.+) \|$")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def option_rows(text: str) -> dict[str, tuple[str, str, str]]:
    """The README's option table: flag -> (environment variable, default cell, meaning)."""
    rows = {}
    for line in text.splitlines():
        if match := ROW.match(line):
            rows[match[1]] = (match[2], match[3], match[4])
    return rows


def default_of(spec: Field[Any]) -> Any:
    if spec.default is not MISSING:
        return spec.default
    assert spec.default_factory is not MISSING, spec.name
    return spec.default_factory()


def documented_default(cell: str, spec: Field[Any]) -> Any:
    """What a default cell means, read with the option's own parser: `256MiB` is 268435456."""
    if cell == "(empty)":
        return "" if isinstance(default_of(spec), str) else ()
    if cell == "(none)" or cell.startswith("(from "):
        return None
    match = re.fullmatch(r"`([^`]*)`", cell)
    assert match, f"{option_name(spec.name)}: default cell {cell!r} is not `value` or (empty)"
    return spec.metadata["parse"](match[1])


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """Relative link targets, outside code blocks and code spans."""
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text()))
    return [
        target
        for target in LINK.findall(text)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: …
    ]


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in links(page):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved.relative_to(root)}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(root)}")
    return broken


def test_every_option_is_documented_with_its_environment_variable_and_default() -> None:
    rows = option_rows(README.read_text())
    for spec in fields(Settings):
        flag = option_name(spec.name)
        assert flag in rows, f"{flag} is missing from the README's option table"
        env, default, _meaning = rows[flag]
        assert env == env_name(spec.name), flag
        assert documented_default(default, spec) == default_of(spec), flag


def test_every_row_of_the_option_table_is_an_option() -> None:
    """A row for an option that no longer exists must say so (removed), or go."""
    options = {option_name(spec.name) for spec in fields(Settings)}
    for flag, (_env, _default, meaning) in option_rows(README.read_text()).items():
        assert flag in options or "removed" in meaning, f"{flag} is in the table, not in Settings"


def test_every_metric_is_documented() -> None:
    from prometheus_client import CollectorRegistry

    from proxy.ops.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    text = (DOCS / "operations.md").read_text()
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        name = name + "_info" if family.type == "info" else name
        assert f"| `{name}` |" in text, name


def test_the_readme_is_short_and_names_its_two_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    for command in ("scripts/demo", "scripts/test"):
        assert f"\n{command} " in text, command
        assert (ROOT / command).stat().st_mode & 0o111, f"{command} is not executable"


def test_every_page_under_docs_is_linked_from_the_readme() -> None:
    assert len(links(README)) >= len(list(DOCS.glob("*.md"))), "the link pattern finds nothing"
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    for page in DOCS.glob("*.md"):
        assert page.resolve() in linked, f"README links nowhere to {page.relative_to(ROOT)}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A `coded` heading: yes\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-coded-heading-yes) [self](#title) `[not a link](nowhere.md)`\n"
        "# Title\n[gone](missing.md) [no anchor](other.md#nothing) <https://example.com>\n"
    )
    assert broken_links(page, tmp_path.resolve()) == [
        "missing.md: no file missing.md",
        "other.md#nothing: no heading #nothing in other.md",
    ]

"""The docs stay reachable from the code: every "docs/sn-spec.md section N" cited in the repo
names a section the spec has, and nothing points outside the repository (a user's clone has
only what is tracked)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "sn-spec.md"
SECTION_HEADING = re.compile(r"^## (\d+)\. \S", re.M)
CITATION = re.compile(r"docs/sn-spec\.md\s+sections?\s+(\d+)(?:\s*-\s*(\d+))?")
# Built from parts so that this file does not match itself.
OUTSIDE_REFERENCES = ("../" + "shared", "/work/" + "shared")
OLD_SPEC_NAME = re.compile(r"\bSN_" + r"SPEC\b")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
_UNTRACKED_DIRS = {".git", ".venv", "__pycache__", "node_modules", "runs", "out", "test-artifacts"}


def tracked_files() -> list[Path]:
    """The files git tracks (what a clone has); without git, the tree minus build outputs."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        paths = [ROOT / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        paths = [
            p
            for p in ROOT.rglob("*")
            if not _UNTRACKED_DIRS & set(p.relative_to(ROOT).parts)
            and not any(part.endswith(".egg-info") for part in p.parts)
        ]
    return [p for p in paths if p.is_file()]  # a tracked file may be deleted in the work tree


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data:  # binary (images)
        return None
    return data.decode("utf-8", errors="replace")


def spec_sections() -> list[int]:
    return [int(n) for n in SECTION_HEADING.findall(SPEC.read_text(encoding="utf-8"))]


def cited_sections(text: str) -> list[int]:
    cited = []
    for first, last in CITATION.findall(text):
        cited.extend(range(int(first), int(last or first) + 1))
    return cited


def test_spec_sections_are_numbered_one_to_n():
    sections = spec_sections()
    assert sections, "docs/sn-spec.md has no '## N. title' sections"
    assert sections == list(range(1, len(sections) + 1)), sections


def test_every_cited_spec_section_exists():
    sections = set(spec_sections())
    citations = 0
    missing = []
    for path in tracked_files():
        text = text_of(path)
        if text is None:
            continue
        for number in cited_sections(text):
            citations += 1
            if number not in sections:
                missing.append(f"{path.relative_to(ROOT)}: section {number}")
    assert citations > 0, "found no 'docs/sn-spec.md section N' citation: is the pattern stale?"
    assert not missing, f"cited sections that docs/sn-spec.md lacks: {missing}"


def test_citation_pattern_reads_ranges_and_wrapped_lines():
    text = "see docs/sn-spec.md sections 1-3 and docs/sn-spec.md\n    section 5"
    assert cited_sections(text) == [1, 2, 3, 5]


def test_nothing_points_outside_the_repository():
    offenders = []
    for path in tracked_files():
        text = text_of(path)
        if text is None:
            continue
        for needle in OUTSIDE_REFERENCES:
            if needle in text:
                offenders.append(f"{path.relative_to(ROOT)} mentions {needle}")
        if OLD_SPEC_NAME.search(text):
            offenders.append(f"{path.relative_to(ROOT)} cites the spec by its old name")
    assert not offenders, offenders


def test_relative_links_in_the_docs_resolve():
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in MARKDOWN_LINK.findall(doc.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken

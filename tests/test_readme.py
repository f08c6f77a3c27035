"""The front door stays small and every document sends its reader only to places inside the repository."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README_BUDGET_CHARS = 10_000
DOCUMENTS = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
AUTOLINK = re.compile(r"<([a-z][a-z0-9+.-]*:[^>\s]*)>", re.IGNORECASE)
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
PARENT_PATH = re.compile(r"(?<![\w./])(?:\.\./)+[\w./-]*")


def link_targets(text: str) -> list[str]:
    """Targets of inline, reference and angle-bracket links outside fenced code blocks."""
    prose = FENCE.sub("", text)
    return [m.group(1) for pattern in (INLINE_LINK, REFERENCE_LINK, AUTOLINK) for m in pattern.finditer(prose)]


def inside_repo(path: Path) -> bool:
    return path == REPO or REPO in path.parents


def link_problem(document: Path, target: str) -> str | None:
    """Why `target`, linked from `document`, does not lead to a file or folder of this repository; None if it does."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
        return "points outside the repository"
    path = target.split("#", 1)[0]
    if not path:
        return None  # an anchor within the document
    if path.startswith("/"):
        return "is an absolute path"
    resolved = (document.parent / path).resolve()
    if not inside_repo(resolved):
        return "escapes the repository"
    if not resolved.exists():
        return "does not exist"
    return None


def test_documents_are_found() -> None:
    assert all(d.exists() for d in DOCUMENTS)
    assert {"architecture.md", "performance-log.md"} <= {d.name for d in DOCUMENTS}


def test_readme_stays_within_its_budget() -> None:
    size = len((REPO / "README.md").read_text(encoding="utf-8"))
    assert size <= README_BUDGET_CHARS, f"README.md has {size} characters, over its budget of {README_BUDGET_CHARS}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: str(d.relative_to(REPO)))
def test_links_stay_inside_the_repository(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    problems = [f"{target} {why}" for target in link_targets(text) if (why := link_problem(document, target))]
    problems += [f"{url} points outside the repository" for url in URL.findall(text)]
    assert not problems, f"{document.relative_to(REPO)}: " + "; ".join(problems)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: str(d.relative_to(REPO)))
def test_no_relative_path_escapes_the_repository(document: Path) -> None:
    """Paths in prose and code alike: `../` may climb only as far as the repository root."""
    escaping = [p for p in PARENT_PATH.findall(document.read_text(encoding="utf-8")) if not inside_repo((document.parent / p).resolve())]
    assert not escaping, f"{document.relative_to(REPO)} names paths outside the repository: {escaping}"


def test_readme_links_the_benchmarks_and_the_design() -> None:
    readme = REPO / "README.md"
    linked = {(readme.parent / t.split("#", 1)[0]).resolve() for t in link_targets(readme.read_text(encoding="utf-8"))}
    assert {REPO / "bench" / "README.md", REPO / "docs" / "architecture.md"} <= linked


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("docs/architecture.md", None),
        ("docs/architecture.md#flows", None),
        ("#errors", None),
        ("docs/missing.md", "does not exist"),
        ("../shared/DESIGN.md", "escapes the repository"),
        ("/etc/hosts", "is an absolute path"),
        ("https://example.org/", "points outside the repository"),
    ],
)
def test_link_problems_are_named(target: str, problem: str | None) -> None:
    assert link_problem(REPO / "README.md", target) == problem


def test_links_are_read_from_prose_not_code() -> None:
    text = "See [the design](docs/architecture.md) and <https://example.org>.\n```\n[x](inside-a-fence.md)\n```\n[ref]: bench/README.md\n"
    assert link_targets(text) == ["docs/architecture.md", "bench/README.md", "https://example.org"]

"""docs/architecture.md matches the code: every module is in its table, every path it names exists."""

from __future__ import annotations

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "architecture.md").read_text()
MODULES = sorted(path.relative_to(REPO).as_posix() for path in (REPO / "mpcompile").rglob("*.py"))
TABLE_ROW = re.compile(r"^\| `(mpcompile/[\w/]+\.py)` \|", re.M)


@pytest.mark.parametrize("module", MODULES)
def test_every_module_has_a_row(module: str) -> None:
    assert module in TABLE_ROW.findall(DOC), f"{module} is missing from docs/architecture.md's module table"


def test_every_path_named_exists() -> None:
    named = set(re.findall(r"\b((?:mpcompile|tests|tools|docs)/[\w/.-]*\w)", DOC))
    short = set(
        re.findall(
            r"(?<![\w/])((?:core|compiler|io|irtools|policy|passes|analysis|evaluate|auto|report|validate|training|targets|commands)/[\w/]*\w\.py)",
            DOC,
        )
    )
    missing = sorted(
        path
        for path in named | {f"mpcompile/{path}" for path in short}
        if "*" not in path and not (REPO / path).exists() and not list(REPO.glob(path + "*"))
    )
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_pipeline_pass_named_exists() -> None:
    import mpcompile.passes.apply_precision
    from mpcompile.compiler import converter

    named = set(re.findall(r"\b(\w+Pass)\b", DOC))
    source = (
        pathlib.Path(converter.__file__).read_text()
        + pathlib.Path(mpcompile.passes.apply_precision.__file__).read_text()
    )
    used = set(re.findall(r"\b(\w+Pass)\(", source))
    assert named >= used, (
        f"passes the pipeline runs but docs/architecture.md does not name: {sorted(used - named)}"
    )
    unknown = {
        name
        for name in named
        if not any(name in path.read_text() for path in (REPO / "mpcompile" / "passes").glob("*.py"))
    }
    assert not unknown, f"docs/architecture.md names passes that do not exist: {sorted(unknown)}"

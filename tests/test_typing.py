"""mypy proves the typing: every file under tests/typing checks clean, and each marked line really is an error.

A marked line ends in `# type: ignore[code]`, optionally followed by `  # says: text` when the message matters:
without the ignore, mypy must report exactly that error code on that line (and a message containing the text)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
FILES = sorted(TYPING.glob("*.py"))
MARK = re.compile(r"  # type: ignore\[([a-z-]+)\](?:  # says: (.*))?")


def _mypy(path: Path) -> tuple[str, int]:
    out, err, status = api.run(["--config-file", str(ROOT / "mypy.ini"), "--no-incremental", str(path)])
    return out + err, status


def _strip_marks(source: str) -> tuple[list[str], dict[int, tuple[str, str | None]]]:
    """The source without its marks, and for each marked line number its expected code and message text."""
    lines = []
    expected = {}
    for number, line in enumerate(source.splitlines(), start=1):
        match = MARK.search(line)
        if match:
            expected[number] = (match.group(1), match.group(2))
            line = line[: match.start()] + line[match.end() :]
        lines.append(line)
    return lines, expected


def test_every_typing_file_is_found() -> None:
    assert TYPING / "flow_types.py" in FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_typing_file_checks_clean(path: Path) -> None:
    out, status = _mypy(path)
    assert status == 0, out


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_marked_line_is_an_error_without_its_ignore(path: Path, tmp_path: Path) -> None:
    lines, expected = _strip_marks(path.read_text())
    assert expected, f"{path.name} marks no error: mark each line mypy must refuse with # type: ignore[code]"
    stripped = tmp_path / f"{path.stem}_stripped.py"
    stripped.write_text("\n".join(lines) + "\n")
    out, status = _mypy(stripped)
    assert status == 1, out
    found: dict[int, list[tuple[str, str]]] = {}
    for m in re.finditer(r":(\d+): error: (.*)  \[([a-z-]+)\]$", out, re.M):
        found.setdefault(int(m.group(1)), []).append((m.group(3), m.group(2)))
    for number, (code, text) in expected.items():
        errors = found.get(number, [])
        assert code in [c for c, _ in errors], f"{path.name}:{number}: expected [{code}], mypy said:\n{out}"
        if text is not None:
            assert any(text in message for c, message in errors if c == code), f"{path.name}:{number}:\n{out}"

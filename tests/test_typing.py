"""mypy proves the typing: the file under tests/typing checks clean, and each marked line really is an error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parent.parent
TYPED = ROOT / "tests" / "typing" / "flow_types.py"
IGNORE = re.compile(r"  # type: ignore\[([a-z-]+)\]")


def _mypy(path: Path) -> tuple[str, int]:
    out, err, status = api.run(["--config-file", str(ROOT / "mypy.ini"), "--no-incremental", str(path)])
    return out + err, status


def test_typing_file_checks_clean() -> None:
    out, status = _mypy(TYPED)
    assert status == 0, out


def test_each_marked_line_is_an_error_without_its_ignore(tmp_path: Path) -> None:
    source = TYPED.read_text()
    expected = {}
    lines = []
    for number, line in enumerate(source.splitlines(), start=1):
        match = IGNORE.search(line)
        if match:
            expected[number] = match.group(1)
            line = IGNORE.sub("", line)
        lines.append(line)
    assert len(expected) >= 4
    stripped = tmp_path / "flow_types_stripped.py"
    stripped.write_text("\n".join(lines) + "\n")
    out, status = _mypy(stripped)
    assert status == 1
    found = {int(m.group(1)): m.group(2) for m in re.finditer(r":(\d+): error: .*\[([a-z-]+)\]$", out, re.M)}
    for number, code in expected.items():
        assert found.get(number) == code, f"line {number}: expected [{code}], mypy said:\n{out}"

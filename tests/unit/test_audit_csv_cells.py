"""CSV export cells: client-chosen text never reaches a spreadsheet as a formula."""

from __future__ import annotations

from typing import Any

import pytest

from handoffrail_server.audit.service import csv_cell


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("agent:sales-01", "agent:sales-01"),
        ('{"a":"=1"}', '{"a":"=1"}'),
        ("", ""),
        (None, None),
        (7, 7),
    ],
)
def test_formula_starts_are_quoted_and_everything_else_kept(value: Any, cell: Any) -> None:
    assert csv_cell(value) == cell

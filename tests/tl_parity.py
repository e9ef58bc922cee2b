"""The TransformerLens parity table of docs/hooks.md comes from the tests that check each row.

    @parity("feature", "TransformerLens call", "ours", "status")
    def test_...(): ...

`scripts/hooks_table.py` imports every tests/test_tl_*.py and writes one row per decorated test
(with the test's name), so a row exists only while a test checks it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ROWS: list[Row] = []


@dataclass(frozen=True)
class Row:
    feature: str
    transformer_lens: str
    ours: str
    status: str
    test: str  # module::function


def parity(feature: str, transformer_lens: str, ours: str, status: str) -> Callable:
    def mark(test: Callable) -> Callable:
        ROWS.append(Row(feature, transformer_lens, ours, status, f"{test.__module__.rsplit('.', 1)[-1]}::{test.__name__}"))
        return test

    return mark

"""`workbench probe`: scripted probe runs (placeholder until the runner lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="run attention probes over a dataset")
    p.set_defaults(func=lambda args: (_ for _ in ()).throw(ValueError("probe runner not implemented yet")))

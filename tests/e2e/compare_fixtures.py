"""List how the shared AdmissionReview fixtures differ from what the real API server sent.

    python -m tests.e2e.compare_fixtures [--fixtures DIR] [--captured DIR] [--values]

Shape differences (keys present on one side only, other JSON types, list lengths) always;
value differences too with --values (uids, timestamps and resourceVersions are never reported).
Exit code 1 when there is any shape difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .shape import report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_FIXTURES = REPO / "tests" / "fixtures"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.compare_fixtures")
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    parser.add_argument("--captured", type=Path, default=DEFAULT_FIXTURES / "captured")
    parser.add_argument("--values", action="store_true", help="also list differing values")
    args = parser.parse_args(argv)

    shapes = 0
    for fixture in sorted(args.fixtures.glob("*.json")):
        captured = args.captured / fixture.name
        print(f"== {fixture.name}")
        if not captured.exists():
            print("   (no capture)")
            continue
        lines = report(json.loads(fixture.read_text()), json.loads(captured.read_text()))
        shown = [ln for ln in lines if args.values or ln.startswith("shape")]
        shapes += sum(ln.startswith("shape") for ln in lines)
        for line in shown or ["(none)"]:
            print(f"   {line}")
    return 1 if shapes else 0


if __name__ == "__main__":
    sys.exit(main())

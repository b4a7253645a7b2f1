"""A pytest plugin (tests/conftest.py loads it): every reason code a decision carries in
this session, for tests/unit/test_reasons.py's check that the tests produce every code.

It records what `Verdict.finish` returns, the one place every Decision is made (decide()
and the webhook's own faults alike), for tests that decide in this process: unit tests,
and the integration tests that run the webhook in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from changegate.core.verdict import Decision, Verdict

SEEN: set[str] = set()
CHECK = "test_every_reason_code_is_produced_by_some_test"
# The check needs every test file of these folders in the session (not, say, one file).
PRODUCERS = ("unit", "integration")
TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True, scope="session")
def _record_reasons() -> Iterator[None]:
    finish = Verdict.finish

    def recording(self: Verdict, *args: Any, **kwargs: Any) -> Decision:
        decision = finish(self, *args, **kwargs)
        SEEN.update(problem.code for problem in decision.reasons)
        return decision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Verdict, "finish", recording)
        yield


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what they do
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The check runs last, once everything else has decided what it decides."""
    checks = [item for item in items if item.name == CHECK]
    for item in checks:
        items.remove(item)
        items.append(item)
    config.stash[_WHOLE] = _whole_folders_collected(items)


_WHOLE = pytest.StashKey[bool]()


def _whole_folders_collected(items: list[pytest.Item]) -> bool:
    collected = {Path(item.path).resolve() for item in items}
    wanted = {path.resolve() for folder in PRODUCERS
              for path in (TESTS / folder).glob("test_*.py")}
    return wanted <= collected


def whole_session(config: pytest.Config) -> bool:
    """Whether this session collected every test file of tests/unit and tests/integration."""
    return config.stash.get(_WHOLE, False)

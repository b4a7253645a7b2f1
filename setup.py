"""Everything is in pyproject.toml, except the optional compiled core.

CHANGEGATE_COMPILE=1 compiles the decision core with mypyc (it is mypy --strict already):
the container image is built so, and `decide` runs ~1.5x faster. Without it (the default,
and every editable install) the same modules run as plain Python. Compiling needs mypy and
a C compiler in the build environment: `pip wheel --no-build-isolation` after
`pip install mypy setuptools`. CI runs the unit and integration tests both ways.
"""

import os

from setuptools import setup

# The request path's pure modules. policy, statement and trust are pydantic models, which
# mypyc does not compile; they are read once per snapshot, not per request.
COMPILED = [f"controller/changegate/core/{name}.py" for name in (
    "approval", "audit", "compose", "decision", "digest", "dsse", "errors", "guards", "guide",
    "review", "snapshot", "verdict")]

ext_modules = []
if os.environ.get("CHANGEGATE_COMPILE") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(COMPILED, opt_level="3")

setup(ext_modules=ext_modules)

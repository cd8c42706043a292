"""The sweep's tests draw figures: matplotlib builds its font cache on first use by running fc-list, a
process, which the unit tier refuses (tests/conftest.py). Importing its font manager here, at collection,
builds the cache before any test runs (a no-op once the cache exists)."""

import matplotlib.font_manager  # noqa: F401

pytest_plugins = ["tests.reasons_seen"]

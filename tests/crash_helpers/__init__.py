"""Scripts run in subprocesses by the kill -9 tests (never imported by pytest itself)."""

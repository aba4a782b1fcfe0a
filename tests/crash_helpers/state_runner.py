"""One ``--once`` run of a stateful source, for the kill -9 test of mqsync.state.

Usage: state_runner.py STATE_FILE SAVES ITEMS

Loads the state (a counter ``n`` and ``items`` derived from it), then ``SAVES`` times
increments ``n`` and saves. Prints ``L n`` after loading and ``S n`` after each save
returned; the parent kills it at a random moment and checks the file.
"""

from __future__ import annotations

import os
import sys

# a sibling module; the script's directory is not on sys.path when PYTHONSAFEPATH is set
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _light  # noqa: E402

_light.install()

from mqsync.state import load_state, save_state  # noqa: E402


def make_state(n: int, items: int) -> dict:
    """The state after ``n`` saves: every field derived from ``n``, so any mix of two
    versions is detectable."""
    return {"n": n, "items": [n * 31 + i for i in range(items)], "tag": f"run-{n}"}


def main() -> int:
    path, saves, items = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    state = load_state(path, lambda: make_state(0, items))
    n = state["n"]
    if state != make_state(n, items):
        sys.stdout.write("BAD\n")
        return 3
    sys.stdout.write(f"L {n}\n")
    sys.stdout.flush()
    for _ in range(saves):
        n += 1
        save_state(make_state(n, items), path)
        sys.stdout.write(f"S {n}\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

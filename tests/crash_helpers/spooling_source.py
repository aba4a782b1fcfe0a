"""A spooling Source that resumes where it stopped: for the kill -9 tests.

    spooling_source.py URL TOKEN METRIC SPOOL STATE COUNT [PACE]

Sends points ``i = 0 .. COUNT-1`` (time ``T0 + i`` ns, value ``i``) in chunks of 100.
After each chunk is handed over (and so written to the spool) the index of the next
point is saved as state; a restarted run replays the spool and goes on from there.
Sleeps PACE seconds (default 0.005) after each chunk, so a kill lands mid-stream.
Prints ``progress <i>`` lines and ``done`` at the end.
"""

from __future__ import annotations

import sys
import time

from mqsync import Source
from mqsync.state import load_state, save_state

T0 = 1_700_000_000_000_000_000
CHUNK = 100


def main() -> None:
    url, token, metric, spool, state_file, count = sys.argv[1:7]
    count = int(count)
    pace = float(sys.argv[7]) if len(sys.argv) > 7 else 0.005
    state = load_state(state_file, lambda: {"next": 0})
    with Source(token, url, chunk_size=CHUNK, spool=spool) as source:
        index = state["next"]
        while index < count:
            end = min(index + CHUNK, count)
            source.send_many(metric, [T0 + i for i in range(index, end)],
                             [float(i) for i in range(index, end)])
            index = end
            save_state({"next": index}, state_file)
            print(f"progress {index}", flush=True)
            time.sleep(pace)
    print("done", flush=True)


if __name__ == "__main__":
    main()

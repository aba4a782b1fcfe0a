"""Append and ack numbered chunks until killed, for the kill -9 test of mqsync.spool.

Usage: spool_writer.py SPOOL_FILE FIRST_SEQ RANDOM_SEED SYNCHRONOUS

Prints ``O <chunks held>`` once the spool is open; then ``A <id> <seq>`` for each chunk
whose append (or append_many) returned, ``k <ids>`` before an ack and ``K`` after it
returned. The parent kills it at a random moment and compares the spool with that log.
"""

from __future__ import annotations

import os
import random
import sys

# a sibling module; the script's directory is not on sys.path when PYTHONSAFEPATH is set
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _light  # noqa: E402

_light.install()

from mqsync.spool import Spool  # noqa: E402


def payload_of(seq: int) -> bytes:
    """The payload of chunk ``seq``: its number, then a size and filler derived from it."""
    return seq.to_bytes(8, "big") + bytes([seq % 251]) * ((seq * 7919) % 3000)


def metric_of(seq: int) -> str:
    return f"test.metric.{seq % 7}"


def main() -> int:
    path, seq, seed, synchronous = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rng = random.Random(seed)
    out = sys.stdout
    spool = Spool(path, max_bytes=None, synchronous=synchronous)
    live = [chunk.id for chunk in spool.pending()]
    out.write(f"O {len(live)}\n")
    out.flush()
    while True:
        choice = rng.random()
        if choice < 0.55:
            chunk_id = spool.append(metric_of(seq), payload_of(seq), points=seq % 13)
            out.write(f"A {chunk_id} {seq}\n")
            live.append(chunk_id)
            seq += 1
        elif choice < 0.75:
            seqs = list(range(seq, seq + rng.randint(1, 5)))
            ids = spool.append_many([(metric_of(s), payload_of(s), s % 13) for s in seqs])
            out.write("".join(f"A {i} {s}\n" for i, s in zip(ids, seqs)))
            live.extend(ids)
            seq += len(seqs)
        elif live:
            acked = rng.sample(live, min(len(live), rng.randint(1, 6)))
            out.write("k " + " ".join(map(str, acked)) + "\n")
            out.flush()
            spool.ack(acked)
            out.write("K\n")
            gone = set(acked)
            live = [i for i in live if i not in gone]
        out.flush()


if __name__ == "__main__":
    sys.exit(main())

"""Run ids: UUIDv7, time-ordered, and which of them this process minted.

An id ``new_run_id`` minted is new by construction, so ``write_run`` need not look for
it in the store; an id a caller chose is looked up (runs are never overwritten).
"""

from __future__ import annotations

import secrets
import threading
import time

_id_lock = threading.Lock()
_last_id_state: tuple[int, int] = (0, 0)
# Ids new_run_id made in this process and not yet stored: unique by construction, so
# write_run need not look for them in the store (a caller-chosen id it looks up).
_minted: set[str] = set()


def take_minted(run_id: str) -> bool:
    """Whether this process minted ``run_id`` (and forget it: an id is stored once)."""
    with _id_lock:
        if run_id in _minted:
            _minted.discard(run_id)
            return True
        return False


def generate_run_id() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits.

    Unique across processes and machines through 74 random bits; within a process a
    counter in ``rand_a`` keeps ids strictly increasing inside one millisecond.
    """
    global _last_id_state
    with _id_lock:
        now_ms = time.time_ns() // 1_000_000
        last_ms, last_seq = _last_id_state
        if now_ms <= last_ms:
            now_ms, seq = last_ms, last_seq + 1
            if seq > 0xFFF:  # counter exhausted: borrow the next millisecond
                now_ms, seq = last_ms + 1, secrets.randbits(8)
        else:
            seq = secrets.randbits(8)  # leave headroom for the counter
        _last_id_state = (now_ms, seq)
    rand_b = secrets.randbits(62)
    value = (now_ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_run_id() -> str:
    """A fresh UUIDv7 for a run this process will store (write_run need not look it up)."""
    run_id = generate_run_id()
    with _id_lock:
        _minted.add(run_id)
    return run_id

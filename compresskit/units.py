"""Numbers as people read them in reports: SI counts, byte sizes (1 kB = 1000 B) and
durations.

>>> human_bytes(987_340), si(4_740_000), human_seconds(2_530)
('987.3 kB', '4.74M', '42 min')
"""

from __future__ import annotations


def si(n: float) -> str:
    """A count with an SI suffix: 4.74M, 1.19k, 512."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:g}"


def human_bytes(n: float) -> str:
    """A size in decimal units, as file managers and ``ls -h --si`` show it: 1 kB is
    1000 bytes (a 1024-byte unit would be KiB)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def ratio(before: float, after: float) -> str:
    """``after`` as a share of ``before``: 25%, or 1.5x when it grew."""
    if before <= 0:
        return "-"
    share = after / before
    return f"{share:.0%}" if share <= 1 else f"{share:.2f}x"


def human_seconds(seconds: float) -> str:
    """A duration to the unit a person plans by: 45 s, 42 min, 2.1 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

"""Durations as users write them: `0`, `90m`, `36h`, `7d`, `2w`, `1d12h`, or ISO 8601 `P7D`.

Years and months are refused: their length depends on the calendar, and a grace period that
keeps images "a month" should say 30d or 31d.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNIT_SECONDS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}

# At most 9 digits per number: enough for any sensible duration, and int() stays trivial.
_SHORT = re.compile(
    r"(?:(?P<w>[0-9]{1,9})w)?(?:(?P<d>[0-9]{1,9})d)?(?:(?P<h>[0-9]{1,9})h)?"
    r"(?:(?P<m>[0-9]{1,9})m)?(?:(?P<s>[0-9]{1,9})s)?",
)
_ISO = re.compile(
    r"P(?:(?P<w>[0-9]{1,9})W)?(?:(?P<d>[0-9]{1,9})D)?"
    r"(?:T(?:(?P<h>[0-9]{1,9})H)?(?:(?P<m>[0-9]{1,9})M)?(?:(?P<s>[0-9]{1,9})S)?)?",
)
_ISO_CALENDAR = re.compile(r"P(?:[0-9.,]+Y)?(?:[0-9.,]+M)?(?:[0-9.,]+[WD])*(?:T.*)?")

ALLOWED = "0, a number with a unit (90m, 36h, 7d, 2w, 1d12h) or ISO 8601 (P7D, PT36H, P1DT12H)"


def parse_duration(text: str) -> timedelta:
    """The duration `text` names; ValueError saying why when it names none (or a negative one)."""
    value = text.strip()
    if value.startswith("-"):
        raise ValueError("a negative duration is not allowed")
    if value == "0":
        return timedelta(0)
    upper = value.upper()
    if upper.startswith("P"):
        match = _ISO.fullmatch(upper)
        if match is None or upper in ("P", "PT") or upper.endswith("T"):
            if _ISO_CALENDAR.fullmatch(upper) and ("Y" in upper or "M" in upper.split("T")[0]):
                raise ValueError(
                    "years and months are ambiguous (their length varies); use days or weeks"
                )
            if any(sep in upper for sep in ".,"):
                raise ValueError("fractions are not supported; use a smaller unit (PT36H)")
            raise ValueError(f"allowed: {ALLOWED}")
    else:
        match = _SHORT.fullmatch(value.lower())
        if match is None or not value:
            raise ValueError(f"allowed: {ALLOWED}")
    parts = {unit: int(number) for unit, number in match.groupdict().items() if number}
    if not parts:
        raise ValueError(f"allowed: {ALLOWED}")
    try:
        return timedelta(seconds=sum(_UNIT_SECONDS[unit] * n for unit, n in parts.items()))
    except OverflowError:
        raise ValueError("the duration is too large") from None


def format_duration(duration: timedelta) -> str:
    """A short rendering (`1d12h`, `90m`, `0`) that parse_duration reads back to the same value."""
    seconds = int(duration.total_seconds())
    if seconds <= 0:
        return "0"
    out = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)

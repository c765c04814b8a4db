"""``--part I/N``: which cases one of N processes (a SLURM array task, any scheduler's job) takes.

A case belongs to part ``sha256(case id) mod N``. Chosen over "every N-th of the sorted list" because it is
stable when cases are added or removed: a case never moves to another part, so a cohort that grows between two
submissions of the same array does not hand a finished case to a task that has not seen it, and part I's summary
keeps describing the same cases. The price is that parts are not equal in size: with C cases each part holds
about C/N, give or take sqrt(C/N) (for 1000 cases in 10 parts: 100 +/- 10). Parts start at 0, as
``SLURM_ARRAY_TASK_ID`` does with ``--array=0-(N-1)``."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

#: Summary of a run over the whole folder (also what merging the parts' summaries writes).
WHOLE_SUMMARY = "summary.csv"
PART_SUMMARY_PATTERN = re.compile(r"^summary-part-(\d+)-of-(\d+)\.csv$")


@dataclass(frozen=True)
class Part:
    index: int  # 0 .. count-1
    count: int

    @classmethod
    def parse(cls, text: str) -> "Part":
        """``"I/N"`` with 0 <= I < N; a ValueError says what is wrong."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise ValueError(f"--part {text!r}: expected I/N, e.g. 0/4 (parts are numbered from 0)")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or index >= count:
            raise ValueError(f"--part {text!r}: I must be 0 to N-1 (parts are numbered from 0, as SLURM array "
                             "task ids with --array=0-(N-1))")
        return cls(index, count)

    def holds(self, case: str) -> bool:
        return part_of(case, self.count) == self.index

    @property
    def summary_name(self) -> str:
        return f"summary-part-{self.index}-of-{self.count}.csv"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def part_of(case: str, count: int) -> int:
    """The part (0..count-1) of a case id: the first 8 bytes of its UTF-8 sha256, modulo ``count``."""
    return int.from_bytes(hashlib.sha256(case.encode("utf-8")).digest()[:8], "big") % count

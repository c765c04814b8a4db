"""Segment a folder of CTs resumably, alone or beside other processes, on one machine or many.

For every case of its selection (the folder's cases, or those of ``--part I/N``) a run

1. hashes the input and checks the case's manifest: an output that verifies is *skipped* (listed with its
   figures), whatever made it;
2. otherwise claims the case (:mod:`.claims`); a case another live process holds is put aside and revisited
   until that process is done with it (or found dead, and the case taken over);
3. under the claim, checks again, removes what a killed writer of this case left behind (hidden temporary
   files), segments, writes the SR and the report if asked, then the manifest, and releases the claim.

A case whose output verifies but lacks what this run asks for beside it (the report of ``--report``, the DICOM SR
of ``--sr``; :mod:`.extras`) is not segmented again: under its claim, that is written from the CT and the verified
output, and the SR recorded in the manifest. A case that fails there is a failed row like any other.

Outputs are written atomically (:func:`CovidSegLib.io.writing.atomic_output`), the manifest after them: a run
killed at any moment leaves each case either verifiably done or redone by the next run, never half-written, and
no two processes ever work on the same case at once. A case that fails is recorded in
``OUT/.covidseg/failed/<case>.json``; other processes running at the same time report it as failed instead of
trying it again, and a later run tries it again. The summary (:mod:`.summary`) is rewritten after every case.
SIGTERM (what SLURM sends at a time limit or ``scancel``) stops a run as Ctrl-C does: the case in progress is
abandoned cleanly (its claim released, no partial file), the summary written.
"""

from __future__ import annotations

import contextlib
import glob
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Protocol

from ..errors import Cancelled, InputError, ModelError, OutputError
from ..engine.inference import SegmentationResult
from ..engine.model import LoadedModel
from ..engine.pipeline import SegmentOptions, output_path_for, segment_file
from ..io.cases import case_id, find_cases
from ..io.dicom_seg import is_dicom_seg_path
from ..io.writing import write_text
from ..measure.quantification import quantify
from ..measure.report import csv_row, floor_of_card, write_report
from . import extras
from .claims import Claim, Holder, this_process, try_claim
from .hold import held_progress
from .manifest import (expectation_for, manifest_path, read_manifest, record_extras, state_folder,
                       verification_problem, write_manifest)
from .parts import WHOLE_SUMMARY, Part
from .summary import write_summary

#: Seconds between looks at cases other processes hold.
POLL_S = 2.0
ProgressCallback = Callable[[float], "bool | None"]


class CohortDisplay(Protocol):
    """How a run shows itself: the command line gives tqdm bars and printed lines."""

    def case_progress(self, name: str) -> ContextManager[ProgressCallback]: ...

    def say(self, line: str) -> None: ...

    def warn(self, line: str) -> None: ...


@dataclass(frozen=True)
class CohortPlan:
    source: Path  # the folder of CTs
    out: Path  # the output folder
    output_format: str = ".seg.nrrd"
    part: Part | None = None
    report: bool = False  # also OUT/<case>_report/
    sr: bool = False  # also OUT/<case>.sr.dcm beside each DICOM SEG

    @property
    def wanted(self) -> extras.Wanted:
        return extras.Wanted(self.report, self.sr)


@dataclass
class CohortOutcome:
    rows: list[dict[str, object]]
    summary: Path
    #: failed cases by kind: "input" (bad CT), "output" (cannot write), "internal" (anything else)
    failures: dict[str, int] = field(default_factory=lambda: {"input": 0, "output": 0, "internal": 0})

    def count(self, status: str) -> int:
        return sum(1 for row in self.rows if row["status"] == status)


def select_cases(source: Path, part: Part | None) -> list[Path]:
    """The folder's cases (``io.cases.find_cases``) in this part; two inputs with one case id are refused,
    since they would share one output."""
    cases = find_cases(source)
    if not cases:
        raise InputError(source, "folder holds no CT files (.nii, .nii.gz, .nrrd, .mha, .mhd, .dcm) or DICOM series")
    seen: dict[str, Path] = {}
    for ct in cases:
        other = seen.setdefault(case_id(ct), ct)
        if other != ct:
            raise InputError(source, f"{other.name} and {ct.name} are both case {case_id(ct)!r} and would share one "
                                     "output: rename one")
    return [ct for ct in cases if part is None or part.holds(case_id(ct))]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt for the block (main thread only), so cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):  # noqa: ANN001 - the signal module's signature
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class CohortRun:
    """One process's run over a selection of cases (see the module docstring)."""

    def __init__(self, plan: CohortPlan, model: LoadedModel, options: SegmentOptions, display: CohortDisplay
                 ) -> None:
        self.plan, self.model, self.options, self.display = plan, model, options, display
        self.me: Holder = this_process()
        self.started = time.time()
        self.floor = floor_of_card(model.card)
        self.state = state_folder(plan.out)
        self.failures = {"input": 0, "output": 0, "internal": 0}
        self._expectations: dict[Path, dict] = {}  # inputs are hashed once per run, not at every look

    # ---- the loop ----------------------------------------------------------------------------------------
    def run(self) -> CohortOutcome:
        selection = select_cases(self.plan.source, self.plan.part)
        summary = self.plan.out / (self.plan.part.summary_name if self.plan.part else WHOLE_SUMMARY)
        rows = {case_id(ct): self._row(ct, "pending") for ct in selection}
        write_summary(summary, rows.values())  # its name is no CT's: it never overwrites an input
        waiting: dict[Path, str] = {}
        with sigterm_as_interrupt():
            try:
                for number, ct in enumerate(selection, 1):
                    self.display.say(f"case {number} of {len(selection)}: {ct.name}")
                    self._settle(ct, rows, waiting, summary)
                while waiting:
                    time.sleep(POLL_S)
                    for ct in list(waiting):
                        self._settle(ct, rows, waiting, summary)
            finally:
                write_summary(summary, rows.values())
        return CohortOutcome(list(rows.values()), summary, dict(self.failures))

    def _settle(self, ct: Path, rows: dict, waiting: dict[Path, str], summary: Path) -> None:
        row, holder = self.attempt(ct)
        if row is None:
            held_by = holder.describe() if holder else "another process"
            if waiting.get(ct) != held_by:
                self.display.say(f"{ct.name}: in progress by {held_by}; coming back to it")
            waiting[ct] = held_by
            return
        waiting.pop(ct, None)
        rows[case_id(ct)] = row
        write_summary(summary, rows.values())

    # ---- one case ----------------------------------------------------------------------------------------
    def attempt(self, ct: Path) -> tuple[dict[str, object] | None, Holder | None]:
        """The case's row, or ``(None, holder)`` while another live process holds it."""
        case = case_id(ct)
        output = output_path_for(ct, self.plan.out, self.plan.output_format, True)
        manifest = manifest_path(self.plan.out, case)
        try:
            if ct not in self._expectations:
                self._expectations[ct] = expectation_for(ct, output, self.model.card, self.options)
            expectation = self._expectations[ct]
        except InputError as error:
            return self._failed(ct, case, "input", str(error)), None
        if verification_problem(manifest, output, expectation) is None and not self._missing(output, manifest):
            return self._skipped(ct, output, manifest), None
        recent = self._recent_failure(case)
        if recent is not None:
            return recent, None
        claim, holder = try_claim(self.state / "claims", case, self.me)
        if claim is None:
            return None, holder
        with claim:
            problem = verification_problem(manifest, output, expectation)  # another process may just have finished
            self._remove_leftovers(output, manifest)
            if problem is None:
                return self._complete(ct, case, output, manifest, claim), None
            return self._segment(ct, case, output, manifest, expectation, problem, claim), None

    def _missing(self, output: Path, manifest: Path) -> list[str]:
        """What this run asks for beside a verified output that is not there (:func:`.extras.missing`)."""
        return extras.missing(output, read_manifest(manifest), self.plan.wanted)

    def _segment(self, ct: Path, case: str, output: Path, manifest: Path, expectation: dict, problem: str,
                 claim: Claim) -> dict[str, object]:
        note = "" if problem == "no output yet" else f"redone: {problem}"
        try:
            with self.display.case_progress(ct.name) as progress:
                result = segment_file(ct, output, self.model, self.options, held_progress(case, progress))
            made_beside = self._sr_of_new_output(result, output, ct)
            if self.plan.report:
                written, figures = write_report(result.volume, result.labels, extras.report_folder(output), case,
                                                {"ct": str(ct), "labels": str(output)}, protected=[ct],
                                                floor=self.floor)
                result.notes.append(f"report: {written['html']}")
            else:
                figures = quantify(result.labels, result.volume.geometry, result.volume.array, self.floor)
            if not claim.still_held():
                return self._lost_claim(ct, case)
            seconds = float(result.seconds["total"])
            made = {"by": self.me.describe(), "started": self.started, "finished": time.time(), "seconds": seconds,
                    "device": str(result.device), "precision": str(result.precision)}
            cells = {k: v for k, v in csv_row(case, figures).items() if k not in ("case", "status")}
            write_manifest(manifest, expectation, output, result.volume.geometry, made, cells, [ct], made_beside)
            result.notes.extend(f"DICOM SR: {path}" for path in made_beside.values())
        except (ModelError, Cancelled):
            raise
        except Exception as error:  # one strange case must not stop a cohort of hundreds
            return self._failure(ct, case, error)
        (self.state / "failed" / f"{case}.json").unlink(missing_ok=True)
        for line in result.notes:
            (self.display.warn if line.startswith("warning: ") else self.display.say)(f"{ct.name}: {line}")
        self.display.say(f"{ct} -> {output} ({result.slices_inferred}/{result.slices_total} slices on "
                         f"{result.device} in {result.precision}, {seconds:.1f} s){f'; {note}' if note else ''}")
        return {**self._row(ct, "done", output, note), "seconds": seconds, "made_by": self.me.describe(), **cells}

    def _failure(self, ct: Path, case: str, error: Exception) -> dict[str, object]:
        """The failed row of one case's error: bad input or output by its kind, anything else as internal (model
        errors and cancelling end the run instead, before this is reached)."""
        if isinstance(error, (InputError, OutputError)):
            return self._failed(ct, case, "output" if isinstance(error, OutputError) else "input", str(error))
        return self._failed(ct, case, "internal", f"{type(error).__name__}: {error}")

    def _lost_claim(self, ct: Path, case: str) -> dict[str, object]:
        """The row of a case whose claim another process took over while this one worked on it."""
        return self._failed(ct, case, "internal", "its claim was taken over while it ran (this process was judged "
                            "stale); the other process's result stands")

    def _sr_of_new_output(self, result: SegmentationResult, output: Path, ct: Path) -> dict[str, Path]:
        """With ``--sr``, the SR of the output just written (by the manifest's key). Without it, an SR left from
        an earlier run is removed: it describes the SEG this run replaced (another SOP Instance UID)."""
        if self.plan.sr:
            return {extras.SR_KEY: extras.write_sr(result.labels, result.volume, output, self.model, self.floor,
                                                   [ct])}
        stale = extras.sr_path(output)
        if is_dicom_seg_path(output) and stale.is_file():
            stale.unlink()
            result.notes.append(f"removed {stale.name}: it described the DICOM SEG this run replaced")
        return {}

    def _complete(self, ct: Path, case: str, output: Path, manifest: Path, claim: Claim) -> dict[str, object]:
        """A verified case, under its claim: write what this run asks for beside it and lacks (the report, the
        SR, recorded in the manifest), then skip it; any error makes it a failed row, not the end of the run."""
        missing = self._missing(output, manifest)
        if not missing:
            return self._skipped(ct, output, manifest)
        try:
            written = extras.write_missing(ct, output, missing, self.model, self.options, self.floor)
            if not claim.still_held():
                return self._lost_claim(ct, case)
            recorded = {key: path for key, path in written.items() if key == extras.SR_KEY}
            if recorded:
                record_extras(manifest, recorded, [ct])
        except (ModelError, Cancelled):
            raise
        except Exception as error:  # one strange case must not stop a cohort of hundreds
            return self._failure(ct, case, error)
        (self.state / "failed" / f"{case}.json").unlink(missing_ok=True)
        for path in written.values():
            self.display.say(f"{ct.name}: wrote {path}")
        return self._skipped(ct, output, manifest, f"; this run wrote its {' and '.join(missing)}")

    def _skipped(self, ct: Path, output: Path, manifest_file: Path, more: str = "") -> dict[str, object]:
        manifest = read_manifest(manifest_file) or {}
        made = manifest.get("made", {})
        finished = float(made.get("finished") or 0)
        when = "during this run" if finished >= self.started else time.strftime("on %Y-%m-%d %H:%M",
                                                                                 time.localtime(finished))
        note = f"made by {made.get('by', '?')} {when}{more}"
        self.display.say(f"{ct.name}: done already ({note}), skipped")
        return {**self._row(ct, "skipped", output, note), "seconds": made.get("seconds"), "made_by": made.get("by"),
                **manifest.get("figures", {})}

    def _failed(self, ct: Path, case: str, kind: str, error: str) -> dict[str, object]:
        self.failures[kind] += 1
        self.display.warn(f"covidseg: error: {error}")
        record = {"error": error, "kind": kind, "by": self.me.describe(), "at": time.time()}
        try:
            write_text(self.state / "failed" / f"{case}.json", json.dumps(record) + "\n", [ct])
        except OutputError:
            pass  # the row below still says it failed
        return {**self._row(ct, "failed"), "error": error}

    def _recent_failure(self, case: str) -> dict[str, object] | None:
        """A failure of this case by another process during this run: reported, not tried again."""
        try:
            record = json.loads((self.state / "failed" / f"{case}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("at", 0) < self.started or record.get("by") == self.me.describe():
            return None
        kind = record.get("kind") if record.get("kind") in self.failures else "internal"
        self.failures[kind] += 1
        note = f"failed in {record.get('by')} during this run; not tried again"
        self.display.warn(f"covidseg: error: {record.get('error')} ({note})")
        return {"case": case, "status": "failed", "error": record.get("error"), "note": note}

    def _remove_leftovers(self, output: Path, manifest: Path) -> None:
        """Hidden temporary files a killed writer of this case left (``atomic_output`` names them
        ``.NAME.*.tmp*``): the output's, the manifest's, the SR's and the report's; safe to remove, since this
        process holds the case's claim."""
        for folder, name in ((output.parent, output.name), (manifest.parent, manifest.name)):
            for leftover in folder.glob(f".{glob.escape(name)}.*.tmp*"):
                leftover.unlink(missing_ok=True)
        for leftover in extras.temporary_files(output):
            leftover.unlink(missing_ok=True)

    def _row(self, ct: Path, status: str, output: Path | None = None, note: str = "") -> dict[str, object]:
        return {"case": case_id(ct), "status": status, "output": str(output) if output else "", "note": note}


def run_cohort(plan: CohortPlan, model: LoadedModel, options: SegmentOptions, display: CohortDisplay
               ) -> CohortOutcome:
    """Segment ``plan.source`` into ``plan.out`` (see the module docstring); returns the rows and the summary."""
    return CohortRun(plan, model, options, display).run()

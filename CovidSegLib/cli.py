"""The ``covidseg`` command line.

Exit codes a script can rely on: 0 success, 2 bad command line, 3 bad input file (the message names it; in
batch mode: at least one case failed, the others were written), 4 output refused (it would overwrite an input
or a reference, or has an unknown format), 5 model missing, corrupt or not matching its card, 6 cancelled,
1 anything else.
Heavy modules (torch) are imported inside the subcommands that need them, so ``covidseg --help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

from .checks.intensity import hu_range
from .errors import Cancelled, CovidSegError, InputError, ModelError, OutputError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INPUT, EXIT_OUTPUT, EXIT_MODEL, EXIT_CANCELLED = 0, 1, 2, 3, 4, 5, 6
#: Off a terminal, progress is one line each time it passes a multiple of this fraction.
PROGRESS_LINE_STEP = 0.25


@contextlib.contextmanager
def progress_display(description: str, quiet: bool = False, stream: TextIO | None = None
                     ) -> Iterator[Callable[[float], bool]]:
    """A progress callback (fraction done -> cancel?) that shows progress where it helps.

    On a terminal: a tqdm bar. Elsewhere (CI logs, batch jobs, a pipe) a bar's carriage-return updates pile up
    as hundreds of lines, so it prints one line at 0%, 25%, 50%, 75% and 100%. Nothing with ``quiet``."""
    stream = sys.stderr if stream is None else stream
    if quiet:
        yield lambda fraction: False
        return
    if stream.isatty():
        from tqdm import tqdm

        with tqdm(total=100, desc=description, unit="%", file=stream,
                  bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}") as bar:
            def update(fraction: float) -> bool:
                bar.update(round(100 * fraction) - bar.n)
                return False

            yield update
        return
    shown = [-1.0]

    def log_line(fraction: float) -> bool:
        reached = math.floor(fraction / PROGRESS_LINE_STEP + 1e-9) * PROGRESS_LINE_STEP
        if reached > shown[0]:
            shown[0] = reached
            print(f"{description}: {100 * reached:.0f}%", file=stream, flush=True)
        return False

    yield log_line




def add_intensity_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--intensity", choices=("hu", "windowed"), default="hu",
        help="input intensities: 'hu' (default, checked) or 'windowed' for 8-bit exports of a HU window",
    )
    parser.add_argument(
        "--window", type=hu_range, default=(-1250.0, 250.0), metavar="LOW,HIGH",
        help="with --intensity windowed: the HU window that 0..255 spans (default -1250,250)",
    )


def add_dicom_options(parser: argparse.ArgumentParser) -> None:
    """DICOM SR output and the DICOMweb round trip (docs/pacs.md). Credentials are never options: a command line
    is visible to every user of the machine."""
    parser.add_argument("--sr", action="store_true",
                        help="also write the quantification as a DICOM SR (TID 1500) beside the DICOM SEG "
                        "(CASE.sr.dcm)")
    parser.add_argument("--dicomweb", metavar="URL",
                        help="segment a series held by this DICOMweb server (e.g. http://host:8042/dicom-web) "
                        "instead of a local CT; credentials from COVIDSEG_DICOMWEB_USER / "
                        "COVIDSEG_DICOMWEB_PASSWORD or COVIDSEG_DICOMWEB_TOKEN, or --dicomweb-credentials")
    parser.add_argument("--study", metavar="UID", help="with --dicomweb: the StudyInstanceUID (--series: its series)")
    parser.add_argument("--store", action="store_true",
                        help="with --dicomweb: store the DICOM SEG (and the SR with --sr) into the study (STOW-RS)")
    parser.add_argument("--dicomweb-credentials", metavar="FILE",
                        help='with --dicomweb: a JSON file {"user": ..., "password": ...} or {"token": ...}')


def cmd_info(args: argparse.Namespace) -> int:
    from .checks.intensity import intensity_stats, prepare_ct
    from .io.orientation import plan_reorientation
    from .checks.plausibility import geometry_warnings
    from .io.reading import read_volume

    volume = prepare_ct(read_volume(args.ct, args.series), args.intensity, args.window)
    geometry = volume.geometry
    plan = plan_reorientation(geometry)
    stats = intensity_stats(volume.array)
    print(f"file:        {volume.source}")
    for note in volume.notes:
        print(f"read:        {note}")
    print(f"size:        {' x '.join(map(str, geometry.size))} voxels ({volume.array.dtype})")
    print(f"spacing:     {', '.join(f'{s:g}' for s in geometry.spacing)} mm")
    print(f"origin:      {', '.join(f'{s:g}' for s in geometry.origin)} mm (LPS)")
    orientation = "canonical (LPS axial)" if plan.is_identity else \
        f"axes {plan.source_axis}, flips {plan.flip} to canonical"
    print(f"orientation: {orientation}")
    print(f"intensity:   {stats.minimum:g} .. {stats.maximum:g} HU, "
          f"{100 * stats.air_fraction:.1f}% air/lung-like voxels")
    warnings = geometry_warnings(geometry)
    for warning in warnings:
        print(f"warning:     {warning}")
    print(f"status:      ok, a 3D CT in HU{f' ({len(warnings)} warnings)' if warnings else ''}")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .measure.evaluation import evaluate_case, pair_folders, parse_mapping, parse_tolerances
    from .measure.evaluation_output import format_table, write_results

    prediction, reference = Path(args.prediction), Path(args.reference)
    try:
        prediction_mapping = parse_mapping(args.pred_map) if args.pred_map else None
        reference_mapping = parse_mapping(args.ref_map) if args.ref_map else None
        tolerances = parse_tolerances(args.nsd_tolerance or "")
    except ValueError as error:
        print(f"covidseg evaluate: {error}", file=sys.stderr)
        return EXIT_USAGE
    notes: list[str] = []
    if prediction.is_dir() and reference.is_dir():
        from .slices.evaluation import is_slice_folder

        if is_slice_folder(reference) and is_slice_folder(prediction):
            return evaluate_slices(prediction, reference, Path(args.out_dir))
    if prediction.is_dir() != reference.is_dir():
        raise InputError(reference, "PREDICTION and REFERENCE must both be files or both be folders")
    if prediction.is_dir():
        pairs, notes = pair_folders(prediction, reference)
    else:
        pairs = [(None, prediction, reference)]
    results = []
    with progress_display(f"evaluate ({len(pairs)} cases)", quiet=len(pairs) < 2) as progress:
        for done, (case, pred_path, ref_path) in enumerate(pairs):
            progress(done / len(pairs))
            results.append(evaluate_case(pred_path, ref_path, prediction_mapping, reference_mapping, tolerances,
                                         case))
        progress(1.0)
    print(format_table(results))
    for note in notes + [n for r in results for n in r.notes]:
        print(f"note: {note}")
    csv_path, json_path = write_results(results, Path(args.out_dir), notes, protected=[prediction, reference])
    print(f"wrote {csv_path} and {json_path}")
    return EXIT_OK


def evaluate_slices(prediction: Path, reference: Path, out_dir: Path) -> int:
    """Slice folders (2D masks, no spacing): per-slice and pooled Dice instead of the volume metrics."""
    from .slices.evaluation import evaluate_slice_folders, format_slice_table, write_slice_results

    evaluation = evaluate_slice_folders(prediction, reference)
    print(format_slice_table(evaluation))
    for note in evaluation.notes:
        print(f"note: {note}")
    csv_path, json_path = write_slice_results(evaluation, out_dir, protected=[prediction, reference])
    print(f"wrote {csv_path} and {json_path}")
    return EXIT_OK


def cmd_predict_slices(args: argparse.Namespace) -> int:
    from .engine.inference import SliceSegmenter, select_device
    from .engine.model import load_model
    from .slices.dataset import predict_slice_images, read_slices, write_slice_masks
    from .io.writing import check_not_protected

    source, out = Path(args.images), Path(args.output)
    check_not_protected(out, [source])  # before any work: masks never go inside the dataset they come from
    model = load_model(args.model)
    slices = read_slices(source, args.window or model.card.preprocessing.window)
    segmenter = SliceSegmenter(model, select_device(args.device), args.batch_size, int8=not args.float32)
    with progress_display(f"predict-slices ({len(slices)} slices)", args.quiet) as progress:
        lungs, infection = predict_slice_images(segmenter, slices, args.npz_orientation, args.represented, progress)
    write_slice_masks(out, [s.name for s in slices], lungs, infection, protected=[source])
    print(f"{len(slices)} slices from {source} -> {out}/lungs/ and {out}/infection/ (PNG, 0/255)")
    return EXIT_OK


def cmd_segment(args: argparse.Namespace) -> int:
    """One CT (file or DICOM folder) here; a folder of CTs goes to the cohort runner, ``--dicomweb`` to pacs."""
    from .io.cases import case_id
    from .engine.model import load_model
    from .engine.pipeline import check_output, output_path_for, segment_file
    from .io.cases import find_cases, is_dicom_folder

    problem = segment_usage_problem(args)
    if problem:
        print(f"covidseg segment: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.dicomweb:
        return cmd_segment_dicomweb(args)
    source, out = Path(args.ct), Path(args.output)
    if not source.exists():
        raise InputError(source, "no such file or folder")
    batch = source.is_dir() and not is_dicom_folder(source)
    if batch and not find_cases(source):  # refused before the model loads
        raise InputError(source, "folder holds no CT files (.nii, .nii.gz, .nrrd, .mha, .mhd, .dcm) or DICOM series")
    if args.part is not None and not batch:
        print(f"covidseg segment: --part takes a share of a folder of CTs; {source} is one case", file=sys.stderr)
        return EXIT_USAGE
    output = output_path_for(source, out, args.format, batch)
    if not batch:  # what can be refused without the model (a DICOM SEG of a NIfTI) is refused before it loads
        check_output(source, output)
    model = load_model(args.model)
    options = segment_options(args)
    if batch:  # resumable, shareable between processes and machines (CovidSegLib.cohort)
        return segment_cohort(args, source, out, model, options)
    with progress_display(source.name, args.quiet) as progress:
        result = segment_file(source, output, model, options, progress)
        if args.sr:  # the quantification as a DICOM SR beside the DICOM SEG
            result.notes.append(f"DICOM SR: {write_case_sr(result, output, model, source)}")
    if args.report:
        from .measure.report import floor_of_card, write_report

        report_dir = output.parent / f"{case_id(output)}_report"
        write_report(result.volume, result.labels, report_dir, case_id(output),
                     {"ct": str(source), "labels": str(output)}, protected=[source], floor=floor_of_card(model.card))
        print(f"report: {report_dir / 'report.html'}")
    print(f"{source} -> {output} ({result.slices_inferred}/{result.slices_total} slices on {result.device} "
          f"in {result.precision}, {result.seconds['total']:.1f} s)")
    for note in result.notes:
        if note.startswith("warning: "):
            print(note, file=sys.stderr)
        else:
            print(f"note: {note}")
    return EXIT_OK


class CohortLines:
    """How a cohort run shows itself here: a progress display per case, its lines on stdout, errors on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def case_progress(self, name: str):
        return progress_display(name, self.quiet)

    def say(self, line: str) -> None:
        print(line, flush=True)

    def warn(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)


def segment_cohort(args: argparse.Namespace, source: Path, out: Path, model, options) -> int:
    """``covidseg segment FOLDER -o OUT [--part I/N]``: every case not verifiably done yet (docs/cohorts.md)."""
    from .cohort.run import CohortPlan, run_cohort

    plan = CohortPlan(source, out, args.format, args.part, args.report, args.sr)
    outcome = run_cohort(plan, model, options, CohortLines(args.quiet))
    share = f" of part {args.part}" if args.part else ""
    print(f"segmented {outcome.count('done')} of {len(outcome.rows)} cases{share} into {out} "
          f"({outcome.count('skipped')} already done, {outcome.count('failed')} failed); summary {outcome.summary}")
    failures = outcome.failures
    return (EXIT_OUTPUT if failures["output"] else EXIT_INPUT if failures["input"] else
            EXIT_FAILURE if failures["internal"] else EXIT_OK)


def cmd_merge_summaries(args: argparse.Namespace) -> int:
    from .cohort.summary import STATUSES, merge_part_summaries

    path, rows = merge_part_summaries(Path(args.output), args.parts)
    counts = {status: sum(1 for r in rows if r["status"] == status) for status in STATUSES}
    print(f"{len(rows)} cases: " + ", ".join(f"{n} {status}" for status, n in counts.items()) + f"; wrote {path}")
    return EXIT_INPUT if counts["failed"] or counts["pending"] else EXIT_OK


def part_option(text: str):
    from .cohort.parts import Part

    try:
        return Part.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def segment_options(args: argparse.Namespace):
    from .engine.pipeline import SegmentOptions

    return SegmentOptions(args.device, args.batch_size, args.intensity, args.window, args.format, args.allow_empty,
                          args.series, separate_infection=not args.merge_infection, int8=not args.float32)


def segment_usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with a ``covidseg segment`` command line that argparse cannot see (exit code 2)."""
    from .io.dicom_seg import DICOM_SEG_FORMAT, is_dicom_seg_path
    from .io.writing import LABEL_SUFFIXES

    if bool(args.ct) == bool(args.dicomweb):
        return "give a CT (file or folder) or --dicomweb URL --study UID, one of them"
    if not args.dicomweb and (args.study or args.store or args.dicomweb_credentials):
        return "--study, --store and --dicomweb-credentials go with --dicomweb URL"
    if args.dicomweb and not args.study:
        return "--dicomweb needs --study UID (and --series UID for a study with several image series)"
    if args.dicomweb and (args.report or args.part is not None):
        return ("--report and --part go with a local CT or folder, not --dicomweb (--sr writes the quantification "
                "as a DICOM SR)")
    if args.dicomweb:
        from .pacs.uids import uid_problem

        problem = uid_problem(args.study, "--study") or (uid_problem(args.series, "--series") if args.series else None)
        if problem:
            return problem
    if args.output is None and not (args.dicomweb and args.store):
        return "-o/--output is required (only --dicomweb ... --store may go without)"
    out = Path(args.output) if args.output else None
    names_label_file = out is not None and any(out.name.lower().endswith(s) for s in LABEL_SUFFIXES)
    if args.format == DICOM_SEG_FORMAT and names_label_file:
        return (f"--format dicom-seg writes a DICOM SEG, but -o names a label file ({out.name}): give FILE.dcm or "
                "a folder")
    seg_output = (out is not None and is_dicom_seg_path(out)) or (args.format == DICOM_SEG_FORMAT and
                                                                   not names_label_file) or bool(args.store)
    if args.sr and not seg_output:
        return "--sr writes the quantification beside a DICOM SEG: give -o FILE.dcm, --format dicom-seg or --store"
    return None


def write_case_sr(result, seg_path: Path, model, ct: Path) -> Path:
    """The quantification as a DICOM SR beside the case's DICOM SEG, graded as its report grades it."""
    from .engine.pipeline import algorithm_identity
    from .measure.dicom_sr import write_sr_beside_seg
    from .measure.severity import floor_of_card

    return write_sr_beside_seg(result, seg_path, algorithm_identity(model), floor_of_card(model.card), [ct]).path


def cmd_segment_dicomweb(args: argparse.Namespace) -> int:
    """``covidseg segment --dicomweb URL --study UID [--series UID] [-o OUTPUT] [--store] [--sr]``: download the
    series, segment it as a local DICOM folder, store the verified SEG (and SR) back (CovidSegLib.pacs)."""
    import os

    from .engine.model import load_model
    from .pacs.credentials import checked_url, credentials_from, display_url, readable_by_others, sent_in_clear
    from .pacs.dicomweb import DicomWebServer
    from .pacs.roundtrip import DicomWebRequest, check_local_output, choose_series, segment_from_dicomweb

    try:
        url = checked_url(args.dicomweb)
        credentials = credentials_from(os.environ, args.dicomweb_credentials)
    except ValueError as error:
        print(f"covidseg segment: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.dicomweb_credentials and readable_by_others(args.dicomweb_credentials):
        print(f"warning: {args.dicomweb_credentials} can be read by other users of this machine", file=sys.stderr)
    if sent_in_clear(url, credentials):
        print(f"warning: the credentials go unencrypted over plain HTTP to {display_url(url)}; use https://",
              file=sys.stderr)
    request = DicomWebRequest(DicomWebServer(url, credentials), args.study, args.series, args.store, args.sr)
    output = Path(args.output) if args.output else None
    check_local_output(output)
    chosen = choose_series(request)  # a server that is down, a wrong UID or password: refused before the model loads
    model = load_model(args.model)
    with progress_display(f"study {args.study}", args.quiet) as progress:
        trip = segment_from_dicomweb(request, chosen, model, segment_options(args), output, progress, say=print)
    result = trip.result
    done = ", ".join(str(p) for p in trip.outputs) or "(no local output)"
    print(f"{request.describe(trip.series_uid)}: {trip.instances} instances -> {done} ({result.slices_inferred}/"
          f"{result.slices_total} slices on {result.device} in {result.precision}, {result.seconds['total']:.1f} s)")
    if trip.stored:
        print(f"stored in study {args.study} on {request.server.display}: {', '.join(trip.stored)}")
    for note in result.notes:
        print(note if note.startswith("warning: ") else f"note: {note}",
              file=sys.stderr if note.startswith("warning: ") else sys.stdout)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .io.cases import case_id
    from .checks.intensity import prepare_ct
    from .engine.model import BUNDLED_CARD, read_card
    from .io.cases import find_cases, is_dicom_folder
    from .io.reading import read_volume
    from .measure.report import csv_row, csv_text, floor_of_card, labels_for_ct, write_report
    from .io.writing import LABEL_SUFFIXES, write_text

    ct_path, labels_path, out = Path(args.ct), Path(args.labels), Path(args.output)
    card = read_card(args.model or BUNDLED_CARD)
    floor = floor_of_card(card)
    cohort = ct_path.is_dir() and not is_dicom_folder(ct_path)
    if not cohort:
        ct = prepare_ct(read_volume(ct_path), args.intensity, args.window)
        written, _ = write_report(ct, labels_for_ct(labels_path, ct), out, case_id(ct_path),
                                  {"ct": str(ct_path), "labels": str(labels_path)}, protected=[ct_path, labels_path],
                                  floor=floor)
        print(f"wrote {written['html']} and {len(written) - 1} more files into {out}")
        return EXIT_OK
    rows, failures = [], 0
    for case_path in find_cases(ct_path):
        case = case_id(case_path)
        candidates = [labels_path / f"{case}{suffix}" for suffix in LABEL_SUFFIXES]
        try:
            ct = prepare_ct(read_volume(case_path), args.intensity, args.window)
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise InputError(labels_path, f"no label file for case {case}")
            _, result = write_report(ct, labels_for_ct(found, ct), out / case, case,
                                     {"ct": str(case_path), "labels": str(found)}, protected=[ct_path, labels_path],
                                     floor=floor)
            rows.append(csv_row(case, result))
        except InputError as error:
            failures += 1
            rows.append(csv_row(case, None, str(error)))
            print(f"covidseg: error: {error}", file=sys.stderr)
    write_text(out / "cases.csv", csv_text(rows), protected=[ct_path, labels_path])
    print(f"reported {len(rows) - failures} of {len(rows)} cases; cohort table {out / 'cases.csv'}")
    return EXIT_INPUT if failures else EXIT_OK


def cmd_view(argv: list[str]) -> int:
    """The browser viewer lives in CovidSegView (outside this Slicer-free library) and needs the view extra."""
    try:
        from CovidSegView.app import main as view_main
    except ImportError as error:
        print(f"covidseg view: needs the view extra, pip install -e '.[view]' ({error})", file=sys.stderr)
        return EXIT_FAILURE
    return view_main(argv)


def version_text() -> str:
    """``covidseg --version``: the software's version and the bundled model it runs by default, so a result can be
    traced to both (a bug report, a methods section). Reads the card's JSON only; no torch."""
    from . import __version__
    from .engine.model import BUNDLED_CARD

    try:
        card = json.loads(BUNDLED_CARD.read_text(encoding="utf-8"))
        model = f"bundled model {card['name']} (weights sha256 {card['weights_sha256'][:12]})"
    except (OSError, ValueError, KeyError):
        model = f"bundled model missing at {BUNDLED_CARD}"
    return f"covidseg {__version__}, {model}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covidseg", description="Segment lungs and COVID-19 infection in chest CT, measure and compare."
    )
    parser.add_argument("--version", action="version", version=version_text())
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="read a CT, check it is a 3D CT in HU, print its geometry")
    info.add_argument("ct", help="CT file (.nii/.nii.gz/.nrrd/.mha/.dcm) or DICOM series folder")
    info.add_argument("--series", help="DICOM SeriesInstanceUID to read (default: the series with most files)")
    add_intensity_options(info)
    info.set_defaults(handler=cmd_info)

    segment = commands.add_parser(
        "segment", help="segment lungs (left, right) and infection in a CT, a DICOM folder, or a folder of CTs",
        description="Writes a label map on the input's exact grid: 1 left lung, 2 right lung, and the infection as "
        "4 ground-glass opacity and 5 consolidation (told apart by density, when the model card has the rule), "
        "or as 3 infection (--merge-infection, or a card without the rule).",
    )
    segment.add_argument("ct", nargs="?",
                         help="CT file, DICOM series folder, or a folder of CT files / DICOM subfolders (or "
                         "--dicomweb)")
    segment.add_argument("-o", "--output",
                         help="output file (.seg.nrrd, .nii.gz, .nii, .nrrd, .mha; .dcm: a DICOM SEG of a DICOM "
                         "input), or a folder (batch); required unless --dicomweb ... --store")
    segment.add_argument("--format", default=".seg.nrrd", choices=(".seg.nrrd", ".nii.gz", ".nrrd", "dicom-seg"),
                         help="output format when --output is a folder (default .seg.nrrd, named segments; dicom-seg: "
                         "CASE.dcm, a DICOM Segmentation of each DICOM series)")
    segment.add_argument("--model", help="model card (.json) or weights (.safetensors); default: the bundled model")
    segment.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    segment.add_argument("--batch-size", type=int, help="slices per network call (default 8 on CPU, 32 on CUDA; "
                         "halved automatically when GPU memory runs out)")
    segment.add_argument("--float32", action="store_true",
                         help="run the network in float32 on the CPU (default: int8 convolutions on x86 CPUs when the "
                         "model card is calibrated for them, faster; docs/speed.md says how far the two agree)")
    segment.add_argument("--quiet", action="store_true", help="no progress display")
    segment.add_argument("--allow-empty", action="store_true",
                         help="write an empty segmentation when no lung is found (default: an error, exit code 3)")
    segment.add_argument("--series", help="DICOM SeriesInstanceUID to read from a DICOM folder with several series")
    segment.add_argument("--merge-infection", action="store_true",
                         help="write infection as one label (3) instead of ground-glass opacity (4) and consolidation "
                         "(5), for tools that expect the three-label scheme")
    segment.add_argument("--report", action="store_true",
                         help="also write the report (figures, pictures, HTML) into OUTPUT_report/ beside each output")
    segment.add_argument("--part", type=part_option, metavar="I/N",
                         help="with a folder: take only part I of N (0 <= I < N, by a hash of the case name), e.g. "
                         "--part $SLURM_ARRAY_TASK_ID/N; cases already done are skipped, see docs/cohorts.md")
    add_intensity_options(segment)
    add_dicom_options(segment)
    segment.set_defaults(handler=cmd_segment)

    merge = commands.add_parser(
        "merge-summaries", help="join the summaries of 'covidseg segment --part I/N' runs into OUT/summary.csv",
        description="Reads OUT/summary-part-I-of-N.csv for I = 0..N-1 (refusing if one is missing) and writes "
        "OUT/summary.csv, one row per case of the folder. Exit code 3 if a case failed or was never reached.",
    )
    merge.add_argument("output", help="the output folder the parts wrote into")
    merge.add_argument("--parts", type=int, metavar="N", help="N, when the folder holds summaries of several splits")
    merge.set_defaults(handler=cmd_merge_summaries)

    report = commands.add_parser(
        "report", help="volumes, %% involvement, severity estimate, QC pictures and an HTML page for a segmented CT",
        description="CT and LABELS are files (one case), or folders (a cohort: labels paired by case name, one CSV "
        "row per case, an error row for a case that fails).",
    )
    report.add_argument("ct", help="CT file or DICOM folder, or a folder of them")
    report.add_argument("labels", help="label file (CovidSeg output), or a folder of them")
    report.add_argument("-o", "--output", required=True, help="output folder")
    report.add_argument("--model", help="model card (.json) whose measured false infection on CT without COVID-19 "
                        "the report compares the infection with (default: the bundled model)")
    add_intensity_options(report)
    report.set_defaults(handler=cmd_report)

    predict = commands.add_parser(
        "predict-slices", help="segment a folder of single axial slices (8-bit PNG/JPEG, or .npz in HU or 8-bit)",
        description="Runs the model with its own preprocessing on each slice (used whole, no body crop) and writes "
        "OUT/lungs/NAME.png and OUT/infection/NAME.png (0/255), which 'covidseg evaluate OUT DATASET' scores. "
        "8-bit slices are taken as exports of the model's HU window unless --window says otherwise, and go "
        "through the model's representation like HU does; --represented feeds 8-bit slices that are already in it "
        "(the CLAHE slices of the COVID-19-CT-Seg corpus) as they are.",
    )
    predict.add_argument("images", help="folder of slices, or a dataset folder with an images/ (or ct/) subfolder")
    predict.add_argument("-o", "--output", required=True, help="output folder")
    predict.add_argument("--model", help="model card (.json); default: the bundled model")
    predict.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    predict.add_argument("--batch-size", type=int, help="slices per network call")
    predict.add_argument("--float32", action="store_true",
                         help="run the network in float32 on the CPU (default: int8 convolutions on x86 CPUs when the "
                         "model card is calibrated for them)")
    predict.add_argument("--window", type=hu_range, metavar="LOW,HIGH",
                         help="HU window that 0..255 of 8-bit slices spans (default: the model's window)")
    predict.add_argument("--npz-orientation", choices=("nibabel", "display"), default="nibabel",
                         help="how .npz slices are stored: 'nibabel' (COVID-19-CT-Seg: as nibabel returns the "
                              "NIfTI slice, a quarter turn from the display) or 'display' (anterior up)")
    predict.add_argument("--represented", action="store_true",
                         help="8-bit slices are already the model's input representation (corpus CLAHE slices)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(handler=cmd_predict_slices)

    trainer = commands.add_parser(
        "train", help="train or fine-tune a model from a JSON configuration (see python -m CovidSegLib.training)",
        add_help=False,
    )
    trainer.add_argument("arguments", nargs=argparse.REMAINDER)  # main() hands these to the training parser

    viewer = commands.add_parser(
        "view", help="open CTs, segment, compare, quantify and save in a web browser (needs the view extra)",
        add_help=False,
    )
    viewer.add_argument("arguments", nargs=argparse.REMAINDER)  # main() hands these to the viewer's parser

    evaluate = commands.add_parser(
        "evaluate", help="compare segmentations with references (files, or folders paired by file name)",
        description="Per structure (left lung, right lung, both lungs, infection): Dice, Jaccard, NSD, HD95, "
        "sensitivity, specificity, relative volume difference, Rand error, volumes. Both masks empty gives n/a. "
        "Two slice folders (predict-slices output against lungs/, covid/, infection_masks/ or .npz masks) are scored "
        "per slice and pooled (Dice, sensitivity, precision, false-positive slices) into slice_metrics.csv and "
        "slice_summary.json.",
    )
    evaluate.add_argument("prediction", help="predicted label file, or folder of them")
    evaluate.add_argument("reference", help="reference label file, or folder of them (paired by name)")
    evaluate.add_argument(
        "--ref-map", metavar="SPEC",
        help="what the reference's labels mean, e.g. '5=right_lung,6=left_lung', 'right lung=right_lung' "
        "(segment names), '10+11=left_lung,12+13+14=right_lung', or a preset: covidseg, covid19-ct-seg-lungs, "
        "covid19-ct-seg-infection, slicer-ctchest, totalseg-lobes. Default: segment names for .seg.nrrd, "
        "CovidSeg values (1 left lung, 2 right lung, 3 infection, 4 GGO, 5 consolidation) otherwise",
    )
    evaluate.add_argument("--pred-map", metavar="SPEC", help="the same for the prediction")
    evaluate.add_argument(
        "--nsd-tolerance", metavar="SPEC", help="NSD tolerances in mm, default 'lungs=1,infection=3' (infection's "
        "also sets its classes, ggo and consolidation)"
    )
    evaluate.add_argument(
        "-o", "--out-dir", default="covidseg-evaluation", help="folder for metrics.csv and metrics.json"
    )
    evaluate.set_defaults(handler=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # the training command line owns all its options, --help included
        from .training.__main__ import main as training_main

        return training_main(argv[1:], prog="covidseg train")
    if argv[:1] == ["view"]:
        return cmd_view(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except InputError as error:
        print(f"covidseg: error: {error}", file=sys.stderr)
        return EXIT_INPUT
    except OutputError as error:
        print(f"covidseg: error: {error}", file=sys.stderr)
        return EXIT_OUTPUT
    except CovidSegError as error:
        print(f"covidseg: error: {error}", file=sys.stderr)
        if isinstance(error, ModelError):
            return EXIT_MODEL
        return EXIT_CANCELLED if isinstance(error, Cancelled) else EXIT_FAILURE
    except KeyboardInterrupt:
        print("covidseg: interrupted", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())

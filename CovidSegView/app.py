"""``covidseg view``: CovidSeg in a web browser, on Slicer's core (trame-slicer).

Open a CT file or DICOM folder, Segment (progress, Cancel; the network runs on a worker thread so the page stays
live), see Left lung / Right lung / Ground-glass opacity / Consolidation (Infection, with a model card that keeps
it whole) in Slicer's slice and 3D views, set their visibility and opacity,
Compare with a reference, Quantify, and save ``.seg.nrrd`` and the report. Every computation is the module Logic's
or CovidSegLib's (through :class:`CovidSegView.scene.CaseScene`); this file is the page and its wiring. The server
listens on 127.0.0.1 unless told otherwise, reads only the paths typed into it and loads nothing from the internet.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import trame_slicer.views  # noqa: F401  (fails here, as ImportError, where the view extra is missing)

from CovidSegLib.errors import Cancelled, CovidSegError
from CovidSegLib.labels import LABELS, LabelInfo

from .render import offscreen_rendering_problem, without_multisampling
from .scene import DEFAULT_OPACITY, CaseScene, Table

#: Errors a user can act on, shown on the page instead of stopping the server.
USER_ERRORS = (CovidSegError, ValueError, OSError, RuntimeError)
LAYOUT = "Quad View"  # Slicer's four-up layout: coronal, sagittal, 3D, axial


def hex_colour(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgb)


def table_state(table: Table, digits: int = 2) -> dict:
    """A table as page state: numbers rounded for reading (NaN shown as n/a, as ``covidseg evaluate`` does)."""
    def cell(value):
        if isinstance(value, str):
            return value
        return "n/a" if value != value else f"{value:.{digits}f}"

    return {"header": table.header, "rows": [[cell(v) for v in row] for row in table.rows]}


class ViewerApp:
    """The page, its state and its handlers, on one trame server and one case scene."""

    def __init__(self, server, model_path: str | None = None, device: str = "auto", ct_path: str = "",
                 reference_path: str = "", out_dir: str = "") -> None:
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.server, self.state = server, server.state
        server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        self.case = CaseScene(self.slicer_app, model_path, device)
        self.case.load_model()  # before the first render window, see CaseScene.load_model
        register_rca_factories(self.slicer_app.view_manager, server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, server)
        self.layout_manager.register_layout_dict({LAYOUT: LayoutManager.default_grid_configuration()[LAYOUT]})
        self.layout_manager.set_layout(LAYOUT)
        without_multisampling(self.slicer_app.view_manager)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="covidseg-segment")
        self._fraction, self._cancel = 0.0, False
        self._initial_state(ct_path, reference_path, out_dir)
        self._build_ui()

    # ---- state -----------------------------------------------------------------------------------------------
    def _initial_state(self, ct_path: str, reference_path: str, out_dir: str) -> None:
        state = self.state
        state.trame__title = "CovidSeg"
        state.ct_path, state.reference_path, state.out_dir = ct_path, reference_path, out_dir
        state.busy = state.has_ct = state.has_segmentation = False
        state.progress, state.status, state.error = 0, "Open a CT file or DICOM folder.", ""
        state.opacity = DEFAULT_OPACITY
        state.quantify = state.compare = None
        state.severity = state.severity_note = state.warnings = state.saved = ""
        for info in LABELS:
            state[f"show_{info.key}"], state[f"has_{info.key}"] = True, False
            state.change(f"show_{info.key}")(lambda key=info.key, **_: self._on_visibility(key))
        state.change("opacity")(lambda opacity, **_: self._on_opacity(opacity))

    def _on_visibility(self, key: str) -> None:
        self.case.set_segment_visible(key, self.state[f"show_{key}"])

    def _on_opacity(self, opacity) -> None:
        self.case.set_opacity(float(opacity))

    def _report(self, status: str = "", error: str = "") -> None:
        with self.state:
            self.state.status, self.state.error = status, error

    # ---- handlers --------------------------------------------------------------------------------------------
    def _act(self, failure: str, work: Callable[[], dict]) -> None:
        """Run a handler's work and put the state it returns on the page; an error the user can act on (a bad
        path, no segmentation yet) is shown there instead of stopping the server."""
        try:
            updates = work()
        except USER_ERRORS as error:
            self._report(failure, str(error))
            return
        with self.state:
            self.state.update({"error": "", **updates})

    def open_ct(self) -> None:
        def work() -> dict:
            volume = self.case.open_ct(self.state.ct_path.strip())
            size = " x ".join(map(str, volume.geometry.size))
            return {"has_ct": True, "has_segmentation": False, "quantify": None, "compare": None, "saved": "",
                    "severity": "", "progress": 0, "status": f"Opened {volume.name} ({size} voxels). Segment it."}

        self._act("Could not open the CT.", work)

    def segment(self) -> None:
        from trame.app import asynchronous

        self._fraction, self._cancel = 0.0, False  # here, not in the task: a Cancel sent right after still counts
        asynchronous.create_task(self._segment())

    def cancel(self) -> None:
        self._cancel = True
        self._report("Cancelling...")

    def _progress(self, fraction: float) -> bool:
        """Called by the network on the worker thread: note how far it got, ask it to stop after Cancel."""
        self._fraction = fraction
        return self._cancel

    async def _segment(self) -> None:
        with self.state:
            self.state.busy, self.state.progress, self.state.error = True, 0, ""
            self.state.status = "Segmenting..."
        job = asyncio.get_running_loop().run_in_executor(self._executor, self.case.compute, self._progress)
        while not job.done():  # ends with the job: done, failed or cancelled
            with self.state:
                self.state.progress = round(100 * self._fraction)
            await asyncio.wait([job], timeout=0.25)
        try:
            result = job.result()
            self.case.show_labels(result.labels, result.label_infos)  # on the thread that owns the views
        except Cancelled:
            self._finish_segment("Cancelled; nothing was changed.")
        except Exception as error:  # noqa: BLE001 - whatever failed, the page must leave its busy state
            traceback.print_exc()
            self._finish_segment("Segmentation failed.", str(error))
        else:
            shown = result.label_infos
            self._finish_segment(f"Segmented: {', '.join(info.name for info in shown)} are shown. Quantify, "
                                 "Compare or Save.", shown=shown)

    def _finish_segment(self, status: str, error: str = "", shown: tuple[LabelInfo, ...] = ()) -> None:
        """Leave the busy state and say how it ended in one update, so the page never shows one without the
        other; ``shown``: the segments of a finished segmentation, whose rows the segment panel lists."""
        with self.state:
            self.state.busy, self.state.status, self.state.error = False, status, error
            if shown:
                for info in LABELS:
                    self.state[f"has_{info.key}"] = info in shown
                self.state.has_segmentation, self.state.progress = True, 100
                self.state.quantify = self.state.compare = None
                self.state.severity = self.state.saved = ""

    def quantify(self) -> None:
        def work() -> dict:
            table, result = self.case.quantify()
            return {"quantify": table_state(table), "severity": result.severity,
                    "severity_note": result.severity_note, "warnings": " | ".join(result.warnings),
                    "status": "Quantified."}

        self._act("Could not quantify.", work)

    def compare(self) -> None:
        def work() -> dict:
            table = self.case.compare(self.state.reference_path.strip())
            return {"compare": table_state(table, digits=3), "status": "Compared with the reference."}

        self._act("Could not compare.", work)

    def save(self) -> None:
        def work() -> dict:
            written = self.case.save(self.state.out_dir.strip())
            return {"saved": f"{written['segmentation']} and {written['report']}", "status": "Saved."}

        self._act("Could not save.", work)

    # ---- page ------------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        from trame.ui.vuetify3 import VAppLayout
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3

        with VAppLayout(self.server, full_height=True) as self.ui:
            with v3.VAppBar(density="compact"):
                v3.VToolbarTitle("CovidSeg")
                v3.VProgressLinear(model_value=("progress",), id="progress", height=6, absolute=True,
                                   location="bottom", color="primary", active=("busy",))
            with v3.VNavigationDrawer(permanent=True, width=480):
                with v3.VContainer(classes="pa-3"):
                    self._case_panel(v3, html)
                    self._segment_panel(v3, html)
                    self._quantify_panel(v3, html)
                    self._compare_panel(v3, html)
                    self._save_panel(v3, html)
            with v3.VMain():
                with html.Div(style="position: relative; width: 100%; height: calc(100vh - 48px);"):
                    self.layout_manager.initialize_layout_grid(self.ui)

    def _case_panel(self, v3, html) -> None:
        v3.VTextField(v_model=("ct_path",), label="CT file or DICOM folder (path on the server)", id="ct-path",
                      density="compact", hide_details=True, disabled=("busy",))
        with html.Div(classes="d-flex my-2", style="gap: 8px"):
            v3.VBtn("Open", id="open", click=self.open_ct, disabled=("busy",))
            v3.VBtn("Segment", id="segment", click=self.segment, color="primary", disabled=("busy || !has_ct",))
            v3.VBtn("Cancel", id="cancel", click=self.cancel, v_show="busy")
        html.Div("{{ status }}", id="status", classes="text-body-2 my-1")
        html.Div("{{ error }}", id="error", v_show="error", classes="text-body-2 text-error my-1")

    def _segment_panel(self, v3, html) -> None:
        with html.Div(v_show="has_segmentation", id="segments"):
            for info in LABELS:  # rows for the segments this run holds (v_if: d-flex would override v_show)
                with html.Div(classes="d-flex align-center", style="gap: 8px", v_if=f"has_{info.key}"):
                    html.Span(style=f"display:inline-block;width:14px;height:14px;background:{hex_colour(info.color)}")
                    v3.VCheckbox(v_model=(f"show_{info.key}",), label=info.name, id=f"show-{info.key}",
                                 density="compact", hide_details=True)
            v3.VSlider(v_model=("opacity",), label="Opacity", min=0, max=1, step=0.05, id="opacity",
                       density="compact", hide_details=True)

    def _table(self, html, name: str) -> None:
        with html.Div(v_if=name, style="overflow-x: auto"):
            with html.Table(id=f"{name}-table", classes="text-caption my-2", style="border-collapse: collapse"):
                with html.Tr():
                    html.Th("{{ title }}", v_for=f"title in {name}.header", style="text-align:left; padding: 0 4px")
                with html.Tr(v_for=f"row in {name}.rows"):
                    html.Td("{{ cell }}", v_for="cell in row", style="padding: 0 4px")

    def _quantify_panel(self, v3, html) -> None:
        v3.VBtn("Quantify", id="quantify", click=self.quantify, disabled=("busy || !has_segmentation",),
                classes="mt-3")
        html.Div("Severity (automatic estimate): {{ severity }}", id="severity", v_show="severity",
                 classes="text-body-1 mt-2")
        self._table(html, "quantify")
        html.Div("{{ warnings }}", id="warnings", v_show="warnings", classes="text-body-2 text-warning")

    def _compare_panel(self, v3, html) -> None:
        v3.VTextField(v_model=("reference_path",), label="Reference segmentation (.seg.nrrd or label map)",
                      id="reference-path", density="compact", hide_details=True, classes="mt-4")
        v3.VBtn("Compare", id="compare", click=self.compare, disabled=("busy || !has_segmentation",),
                classes="mt-2")
        self._table(html, "compare")

    def _save_panel(self, v3, html) -> None:
        v3.VTextField(v_model=("out_dir",), label="Output folder", id="out-dir", density="compact",
                      hide_details=True, classes="mt-4")
        v3.VBtn("Save .seg.nrrd and report", id="save", click=self.save, disabled=("busy || !has_segmentation",),
                classes="mt-2")
        html.Div("{{ saved }}", id="saved", v_show="saved", classes="text-body-2 mt-1")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="covidseg view", description="CovidSeg in a web browser, on Slicer's core "
                                     "(trame-slicer): open, segment, compare, quantify, save.")
    add_view_arguments(parser)
    return parser.parse_args(argv)


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``covidseg view`` (``covidseg`` hands everything after ``view`` to this parser)."""
    parser.add_argument("ct", nargs="?", default="", help="CT file or DICOM folder to put in the page's CT field")
    parser.add_argument("--reference", default="", help="reference segmentation for Compare")
    parser.add_argument("--out-dir", default="", help="folder for Save")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    parser.add_argument("--timeout", type=int, default=0,
                        help="stop this many seconds after the last browser disconnects (default 0: never)")
    parser.add_argument("--model", help="model card (.json); default: the bundled model")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return serve(args)


def serve(args: argparse.Namespace) -> int:
    """Start the server and block until it stops."""
    problem = offscreen_rendering_problem()
    if problem:
        print(f"covidseg view: {problem}", file=sys.stderr)
        return 1
    from trame.app import get_server

    server = get_server("covidseg-view", client_type="vue3")
    ViewerApp(server, args.model, args.device, args.ct, args.reference, args.out_dir)
    server.controller.on_server_ready.add(
        lambda **_: print(f"covidseg view: serving http://{args.host}:{server.port}/", flush=True))
    sys.argv = sys.argv[:1]  # trame reads its own options from sys.argv; ours are parsed already
    server.start(host=args.host, port=args.port, timeout=args.timeout, open_browser=False,
                 show_connection_info=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

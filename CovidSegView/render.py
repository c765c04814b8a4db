"""Slicer's red, yellow, green and 3D views rendered off-screen to pixels, with no display and no browser.

The views are trame-slicer's (Slicer's displayable managers on slicer-core) with a direct, off-screen render window:
what ``covidseg view`` streams to the browser, as arrays a test can measure and PNGs a person can look at.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

#: View name -> how trame-slicer defines it: Slicer's red (axial), yellow (sagittal), green (coronal) and 3D views.
VIEW_NAMES = ("red", "yellow", "green", "3d")

_PROBE = """
import vtk
window = vtk.vtkRenderWindow()
window.SetOffScreenRendering(1)
window.SetSize(8, 8)
renderer = vtk.vtkRenderer()
renderer.SetBackground(1, 0, 0)
window.AddRenderer(renderer)
window.Render()
grab = vtk.vtkWindowToImageFilter()
grab.SetInput(window)
grab.Update()
print(window.GetClassName(), grab.GetOutput().GetPointData().GetScalars().GetTuple(0))
"""


def offscreen_rendering_problem(timeout_s: float = 60) -> str | None:
    """Why VTK cannot render off-screen here, or None when it can. Probed in a child process because a missing or
    broken OpenGL (no libEGL, no OSMesa) can abort the process that tries."""
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, encoding="utf-8",
                               timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"an off-screen VTK render did not finish in {timeout_s:.0f} s"
    last_line = probe.stdout.strip().splitlines()[-1:] or [""]
    if probe.returncode != 0 or "(255.0, 0.0, 0.0" not in last_line[0]:
        detail = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        return f"VTK cannot render off-screen here (no EGL/OSMesa OpenGL?): {detail[-300:]}"
    return None


def view_definitions() -> dict:
    """View name -> trame-slicer's layout definition of that Slicer view."""
    from trame_slicer.views import ViewLayoutDefinition

    return {"red": ViewLayoutDefinition.axial_view(), "yellow": ViewLayoutDefinition.sagittal_view(),
            "green": ViewLayoutDefinition.coronal_view(), "3d": ViewLayoutDefinition.threed_view()}


def create_offscreen_views(slicer_app, size: tuple[int, int] = (512, 512)) -> dict:
    """Slicer's four views on ``slicer_app``'s scene, each rendering into its own off-screen window."""
    from trame_slicer.views import DirectViewFactory

    slicer_app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    views = {}
    for name, definition in view_definitions().items():
        view = slicer_app.view_manager.create_view(definition)
        view.update_size(*size)  # through the interactor, so the slice logic learns the view's size
        views[name] = view
    slicer_app.view_manager.set_current_view_ids([d.singleton_tag for d in view_definitions().values()])
    without_multisampling(slicer_app.view_manager)
    return views


def without_multisampling(view_manager) -> None:
    """Turn off the views' multisampling (trame-slicer asks for 8 samples): with it, Mesa's software OpenGL draws
    translucent surfaces (a 3D opacity below 1) as nothing at all, so the lungs vanish from the 3D view."""
    for view in view_manager.get_views():
        view.render_window().SetMultiSamples(0)


def capture(view) -> np.ndarray:
    """Render ``view`` and return its pixels as an ``(rows, columns, 3)`` uint8 array, top row first."""
    import vtk
    from vtk.util import numpy_support

    view.render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(view.render_window())
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    columns, rows, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, columns, -1)[..., :3]
    return np.ascontiguousarray(pixels[::-1])  # VTK's first row is the bottom one


def write_png(pixels: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path

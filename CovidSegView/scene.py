"""One case in a Slicer scene: the CT, CovidSeg's segmentation and a reference, shown in Slicer's views.

Everything that computes is CovidSegLib's or the module Logic's; this class only moves data between files, MRML nodes
and the views of a trame-slicer ``SlicerApp``, so the browser viewer and the rendering tests show exactly what the
Slicer module would.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import vtk

import slicer

from CovidSegLib.io.volume import Volume

ProgressCallback = Callable[[float], Optional[bool]]

#: Slicer's "CT-Lung" window preset (Volumes module): the lungs grey, vessels and infection brighter.
LUNG_WINDOW = (1400.0, -500.0)
DEFAULT_OPACITY = 0.5  # Slicer's default 2D fill opacity: the CT stays readable under the segments


def module_logic_class():
    """The Slicer module's Logic class from ``CovidSeg/`` beside this package (a source checkout or editable
    install), so the viewer runs the very code the Slicer module runs rather than a copy of it."""
    folder = Path(__file__).resolve().parents[1] / "CovidSeg"
    if not (folder / "CovidSegLogic.py").is_file():
        raise ImportError(f"CovidSeg/CovidSegLogic.py not found beside {Path(__file__).parent}: install CovidSeg "
                          "from a source checkout (pip install -e '.[view]')")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    from CovidSegLogic import CovidSegLogic

    return CovidSegLogic


def add_volume_node(scene, volume: Volume, name: str):
    """A scalar volume node holding ``volume`` on its exact grid (CovidSegLib's LPS geometry turned into RAS)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    matrix = vtk.vtkMatrix4x4()
    for row, values in enumerate(volume.geometry.ijk_to_ras_matrix()):
        for column, value in enumerate(values):
            matrix.SetElement(row, column, float(value))
    node.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(*LUNG_WINDOW)
    return node


@dataclass(frozen=True)
class Table:
    """A module Logic table node as plain data: the header and rows (text first, then numbers)."""

    header: list[str]
    rows: list[list]


def table_from_node(table_node) -> Table:
    """Read a table the Logic filled (``vtkMRMLTableNode``) so a web page can show the same numbers."""
    table = table_node.GetTable()
    header = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        values = [table.GetValue(r, c) for c in range(table.GetNumberOfColumns())]
        rows.append([values[0].ToString()] + [v.ToDouble() for v in values[1:]])
    return Table(header, rows)


class CaseScene:
    """The scene of one case: open a CT, segment it, compare, quantify, save; keep the views showing it."""

    def __init__(self, slicer_app, model_path: str | None = None, device: str = "auto") -> None:
        self.app = slicer_app
        self.scene = slicer_app.scene
        self.logic = module_logic_class()(self.scene)
        self.model_path = model_path
        self.device = device
        self.ct: Volume | None = None
        self.ct_path: Path | None = None
        self.volume_node = None
        self.segmentation_node = None
        self.reference_node = None
        self.opacity = DEFAULT_OPACITY

    def load_model(self) -> None:
        """Load the network now: before any render window exists (torch's triton and Mesa's LLVM crash when
        torch is imported after an EGL context), and so the first Segment does not wait for it."""
        self.logic.model(self.model_path)

    # ---- open ------------------------------------------------------------------------------------------------
    def open_ct(self, path: str | Path) -> Volume:
        """Read a CT file or DICOM folder with CovidSegLib (same checks and messages as ``covidseg``) and show it;
        a previous case's nodes are removed."""
        from CovidSegLib.checks.intensity import prepare_ct
        from CovidSegLib.io.reading import read_volume

        path = Path(path).expanduser()
        volume = prepare_ct(read_volume(path))
        for node in (self.volume_node, self.segmentation_node, self.reference_node):
            if node is not None:
                self.scene.RemoveNode(node)
        self.segmentation_node = self.reference_node = None
        self.ct, self.ct_path = volume, path
        self.volume_node = add_volume_node(self.scene, volume, volume.name)
        self.app.display_manager.show_volume_in_slice_background(self.volume_node)
        self.app.display_manager.reset_views()
        return volume

    def require_ct(self) -> Volume:
        if self.ct is None:
            raise ValueError("open a CT first")
        return self.ct

    def require_segmentation(self):
        if self.segmentation_node is None:
            raise ValueError("segment the CT first")
        return self.segmentation_node

    # ---- segment ---------------------------------------------------------------------------------------------
    def compute(self, progress: ProgressCallback | None = None):
        """The slow part (the network), touching no MRML node: safe on a worker thread. Returns the engine's
        result: the labels and the segments they need."""
        return self.logic.compute(self.require_ct(), self.device, self.model_path, progress=progress)

    def show_labels(self, labels: np.ndarray, label_infos=None):
        """Put a label map into the case's segmentation node (the Logic's segments, names and colours; those of
        ``label_infos``, by default the ones the labels need), shown filled in the slice views and as surfaces in
        3D. Call on the thread that owns the views."""
        if self.segmentation_node is None:
            self.segmentation_node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                                  f"{self.volume_node.GetName()} CovidSeg")
        self.logic.labels_to_segmentation(labels, self.volume_node, self.segmentation_node, label_infos)
        self.set_opacity(self.opacity)
        self.app.display_manager.reset_views()
        return self.segmentation_node

    def segment(self, progress: ProgressCallback | None = None):
        """Both steps on the calling thread (tests, scripts)."""
        result = self.compute(progress)
        return self.show_labels(result.labels, result.label_infos)

    # ---- display ---------------------------------------------------------------------------------------------
    def set_opacity(self, opacity: float) -> None:
        """One control for the segments' fill in the slice views and their surfaces in 3D, as a reader wants to
        see more or less of the CT beneath."""
        self.opacity = float(opacity)
        if self.segmentation_node is not None:
            display = self.segmentation_node.GetDisplayNode()
            display.SetOpacity2DFill(self.opacity)
            display.SetOpacity3D(max(self.opacity, 0.05))

    def set_segment_visible(self, key: str, visible: bool) -> None:
        if self.segmentation_node is not None:
            self.segmentation_node.GetDisplayNode().SetSegmentVisibility(key, bool(visible))

    def jump_to_voxel(self, k: int, j: int, i: int) -> None:
        """Move the red, yellow and green views through CT voxel (k, j, i), as Slicer's "jump slices" does."""
        ras = self.require_ct().geometry.ijk_to_ras_matrix() @ np.array([i, j, k, 1.0])
        for view in self.app.view_manager.get_slice_views():
            view.get_view_node().JumpSliceByOffsetting(*(float(v) for v in ras[:3]))

    # ---- compare, quantify, save -------------------------------------------------------------------------------
    def open_reference(self, path: str | Path):
        """A reference segmentation, any label file ``covidseg evaluate`` reads (``.seg.nrrd`` segments by name,
        label maps in CovidSeg values), on the CT's grid as named segments; kept out of the views."""
        from CovidSegLib.measure.report import labels_for_ct

        labels = labels_for_ct(Path(path).expanduser(), self.require_ct())
        if self.reference_node is None:
            self.reference_node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Reference")
        self.logic.labels_to_segmentation(labels, self.volume_node, self.reference_node)
        self.reference_node.GetDisplayNode().SetVisibility(False)
        return self.reference_node

    def compare(self, reference_path: str | Path) -> Table:
        """The module's Compare table (Dice, NSD, HD95, volumes per structure) against a reference file."""
        reference = self.open_reference(reference_path)
        return table_from_node(self.logic.compare(self.require_segmentation(), reference, self.volume_node))

    def quantify(self):
        """The module's Quantify table and CovidSegLib's Quantification (severity estimate, warnings)."""
        table, result = self.logic.quantify(self.require_segmentation(), self.volume_node)
        return table_from_node(table), result

    def labels(self) -> np.ndarray:
        return self.logic.label_map(self.require_segmentation(), self.volume_node)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """``CASE.seg.nrrd`` and ``CASE_report/`` (as ``covidseg segment --report`` names and writes them, with
        the model's false-infection note) into ``out_dir``; CovidSegLib's writers refuse to write over the CT."""
        from CovidSegLib.io.cases import case_id
        from CovidSegLib.measure.report import floor_of_card, write_report
        from CovidSegLib.io.writing import write_label_map

        ct, labels = self.require_ct(), self.labels()
        out_dir, case = Path(out_dir).expanduser(), case_id(self.ct_path)
        card = self.logic.model(self.model_path).card
        segmentation = write_label_map(labels, ct.geometry, out_dir / f"{case}.seg.nrrd", protected=[self.ct_path])
        written, _ = write_report(ct, labels, out_dir / f"{case}_report", case,
                                  {"ct": str(self.ct_path), "labels": str(segmentation)}, protected=[self.ct_path],
                                  floor=floor_of_card(card))
        return {"segmentation": segmentation, "report": written["html"]}


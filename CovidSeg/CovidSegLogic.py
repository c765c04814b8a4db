"""CovidSeg module logic: MRML nodes in, MRML nodes out, all the work done by CovidSegLib.

Runs inside 3D Slicer and, for tests, on ``slicer-core`` (Slicer's MRML without the application): it uses only
MRML, vtkSlicerSegmentationsModuleLogic and numpy, never ``slicer.app``, ``slicer.modules``, qt or the global
scene, so the scene is passed in. torch is imported only when a segmentation actually runs.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

from CovidSegLib.labels import LABELS, LabelInfo, segments_for, slicer_terminology_string
from CovidSegLib.io.volume import Geometry, Volume

try:  # in the Slicer application
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
except ImportError:  # slicer-core (tests): the base class only adds parameter-node helpers the logic does not use
    ScriptedLoadableModuleLogic = object

#: Python packages the module needs beyond what Slicer bundles (torch comes from the PyTorch extension).
#: OpenCV computes the model's representation (the corpus' CLAHE); its headless wheel brings no Qt of its own.
PIP_REQUIREMENTS = ("segmentation-models-pytorch>=0.3.3", "safetensors", "slicerio>=1.4", "opencv-python-headless")

ProgressCallback = Callable[[float], Optional[bool]]
#: Where Slicer's DICOM module keeps the SOP Instance UIDs of the files a volume was loaded from (space-separated).
DICOM_INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
#: Node attribute holding the warnings about the input or the result, joined by WARNING_SEPARATOR.
WARNINGS_ATTRIBUTE = "CovidSeg.Warnings"
WARNING_SEPARATOR = " | "


def ensure_segmentation_converters() -> None:
    """Register the labelmap <-> surface converter rules if nobody has: the Slicer application does at start-up,
    bare MRML (slicer-core) does not, and without them a segment cannot hold a binary labelmap."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def geometry_from_volume_node(volume_node) -> Geometry:
    """LPS geometry (CovidSegLib's convention) of a Slicer volume node (RAS)."""
    directions = np.zeros((3, 3))
    volume_node.GetIJKToRASDirections(directions)
    lps_directions = np.diag([-1.0, -1.0, 1.0]) @ directions
    origin = volume_node.GetOrigin()
    dimensions = volume_node.GetImageData().GetDimensions()
    return Geometry(
        size=tuple(int(d) for d in dimensions),
        spacing=tuple(float(s) for s in volume_node.GetSpacing()),
        origin=(-origin[0], -origin[1], origin[2]),
        direction=tuple(float(v) for v in lps_directions.ravel()),
    )


def volume_from_node(volume_node) -> Volume:
    if volume_node is None or volume_node.GetImageData() is None:
        raise ValueError("select an input CT volume")
    array = slicer.util.arrayFromVolume(volume_node)
    return Volume(np.array(array), geometry_from_volume_node(volume_node), volume_node.GetName())


class CovidSegLogic(ScriptedLoadableModuleLogic):
    """Segment, compare and quantify on MRML nodes. One instance keeps the loaded model between runs."""

    def __init__(self, scene=None) -> None:
        if ScriptedLoadableModuleLogic is not object:
            ScriptedLoadableModuleLogic.__init__(self)
        self.scene = scene if scene is not None else slicer.mrmlScene
        ensure_segmentation_converters()
        self._model = None
        self._model_path: str | None = None

    # ---- dependencies ------------------------------------------------------------------------------------
    @staticmethod
    def missing_dependencies() -> list[str]:
        import importlib.util

        names = {"torch": "torch", "segmentation_models_pytorch": "segmentation-models-pytorch",
                 "safetensors": "safetensors", "slicerio": "slicerio", "cv2": "opencv-python-headless"}
        return [pip for module, pip in names.items() if importlib.util.find_spec(module) is None]

    @staticmethod
    def install_dependencies() -> None:
        """In Slicer: torch through the PyTorch extension, the rest with pip, never replacing Slicer's own
        SimpleITK, numpy or torch (``--no-deps`` keeps pip from touching them)."""
        if "torch" in CovidSegLogic.missing_dependencies():
            import PyTorchUtils  # the PyTorch extension, declared in EXTENSION_DEPENDS

            torch_logic = PyTorchUtils.PyTorchUtilsLogic()
            if torch_logic.installTorch(askConfirmation=True) is None:
                raise RuntimeError("PyTorch is required: install it from the PyTorch module")
        for requirement in PIP_REQUIREMENTS:
            slicer.util.pip_install(f"{requirement} --no-deps")
        for extra in ("timm", "huggingface_hub", "tqdm"):  # smp's own needs, none of them Slicer's
            slicer.util.pip_install(extra)

    # ---- segment -----------------------------------------------------------------------------------------
    def model(self, model_path: str | None = None):
        from CovidSegLib.engine.model import load_model

        key = model_path or None
        if self._model is None or self._model_path != key:
            self._model = load_model(key)
            self._model_path = key
        return self._model

    def segment(self, volume_node, segmentation_node=None, device: str = "auto", model_path: str | None = None,
                intensity: str = "hu", progress: ProgressCallback | None = None, separate_infection: bool = True):
        """Segment ``volume_node``; returns the (new or given) segmentation node with the named segments: left and
        right lung, then ground-glass opacity and consolidation (when the model tells them apart and
        ``separate_infection``) or infection.

        Bad input raises CovidSegLib's InputError (the message says what is wrong); cancelling via ``progress``
        raises Cancelled and leaves ``segmentation_node`` as it was. What is only unusual about the input (its
        geometry, no lung found) is kept in the node's ``CovidSeg.Warnings`` attribute, see :meth:`warnings`.
        """
        from CovidSegLib.engine.inference import no_lung_note
        from CovidSegLib.checks.plausibility import geometry_warnings

        volume = volume_from_node(volume_node)
        result = self.compute(volume, device, model_path, intensity, progress, separate_infection)
        if segmentation_node is None:
            segmentation_node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                            f"{volume_node.GetName()} CovidSeg")
        self.labels_to_segmentation(result.labels, volume_node, segmentation_node, result.label_infos)
        no_lung = no_lung_note(result.labels, volume.geometry)
        found_nothing = [f"{no_lung}: check that the image is a chest CT"] if no_lung else []
        segmentation_node.SetAttribute(WARNINGS_ATTRIBUTE,
                                       WARNING_SEPARATOR.join(geometry_warnings(volume.geometry) + found_nothing))
        return segmentation_node

    def compute(self, volume: Volume, device: str = "auto", model_path: str | None = None, intensity: str = "hu",
                progress: ProgressCallback | None = None, separate_infection: bool = True):
        """The engine's result for ``volume`` (labels and the segments they need, ``label_infos``): the slow part
        of :meth:`segment`, which touches no MRML node, so a user interface can run it off its main thread and
        import the result there with :meth:`labels_to_segmentation`."""
        from CovidSegLib.engine.inference import segment_volume
        from CovidSegLib.checks.intensity import prepare_ct

        volume = prepare_ct(volume, intensity)
        return segment_volume(volume, self.model(model_path), device=device, progress=progress,
                              separate_infection=separate_infection)

    @staticmethod
    def warnings(node) -> list[str]:
        """The warnings a segmentation or quantification node carries (empty when there are none)."""
        text = node.GetAttribute(WARNINGS_ATTRIBUTE) if node is not None else None
        return text.split(WARNING_SEPARATOR) if text else []

    def labels_to_segmentation(self, labels: np.ndarray, volume_node, segmentation_node,
                               label_infos: Sequence[LabelInfo] | None = None) -> None:
        """Replace the CovidSeg segments of ``segmentation_node`` (of either label scheme: a run with GGO and
        consolidation replaces one with infection) with ``labels`` on ``volume_node``'s grid, one segment per
        entry of ``label_infos`` (default: the segments the labels need, CovidSegLib.labels.segments_for)."""
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        segmentation = segmentation_node.GetSegmentation()
        for info in LABELS:
            if segmentation.GetSegment(info.key) is not None:
                segmentation.RemoveSegment(info.key)
        label_infos = segments_for(labels, label_infos)
        segment_ids = vtk.vtkStringArray()
        for info in label_infos:
            segmentation.AddEmptySegment(info.key, info.name, list(info.color))
            segmentation.GetSegment(info.key).SetTerminology(slicer_terminology_string(info))
            segment_ids.InsertNextValue(info.key)
        # the import gives label value N to the N-th segment ID: number the labels in the segments' order
        numbered = np.zeros(labels.shape, np.uint8)
        for number, info in enumerate(label_infos, start=1):
            numbered[labels == info.value] = number
        labelmap = self._labelmap_node(numbered, volume_node)
        try:
            logic = slicer.vtkSlicerSegmentationsModuleLogic
            if not logic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node, segment_ids):
                raise RuntimeError("importing the labels into the segmentation failed")
        finally:
            self.scene.RemoveNode(labelmap)
        if segmentation_node.GetDisplayNode() is None:
            segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.CreateClosedSurfaceRepresentation()

    def _labelmap_node(self, labels: np.ndarray, volume_node):
        node = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__covidseg_temp__")
        matrix = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(matrix)
        node.SetIJKToRASMatrix(matrix)
        image = vtk.vtkImageData()
        image.SetDimensions(labels.shape[2], labels.shape[1], labels.shape[0])
        image.GetPointData().SetScalars(
            numpy_support.numpy_to_vtk(np.ascontiguousarray(labels).ravel(), deep=True,
                                       array_type=vtk.VTK_UNSIGNED_CHAR))
        node.SetAndObserveImageData(image)
        return node

    # ---- reading segments back ---------------------------------------------------------------------------
    def segment_mask(self, segmentation_node, segment_id: str, volume_node) -> np.ndarray:
        """A segment as a boolean ``[k, j, i]`` mask on ``volume_node``'s grid (resampled if needed)."""
        labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__covidseg_temp__")
        try:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            logic = slicer.vtkSlicerSegmentationsModuleLogic
            if not logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, volume_node):
                raise RuntimeError(f"exporting segment {segment_id} failed")
            return slicer.util.arrayFromVolume(labelmap) > 0
        finally:
            self.scene.RemoveNode(labelmap)

    def masks_by_label(self, segmentation_node, mapping: Mapping[int, Sequence[str]], volume_node
                       ) -> dict[int, np.ndarray]:
        """Per CovidSeg label value, the union of the mapped segments (given by ID or name)."""
        segmentation = segmentation_node.GetSegmentation()
        masks = {}
        for value, selectors in mapping.items():
            mask = np.zeros(slicer.util.arrayFromVolume(volume_node).shape, bool)
            for selector in selectors:
                segment_id = selector if segmentation.GetSegment(selector) else \
                    segmentation.GetSegmentIdBySegmentName(selector)
                if not segment_id:
                    raise ValueError(f"{segmentation_node.GetName()} has no segment {selector!r}")
                mask |= self.segment_mask(segmentation_node, segment_id, volume_node)
            masks[value] = mask
        return masks

    def label_map(self, segmentation_node, volume_node) -> np.ndarray:
        """The segmentation as one CovidSeg label map on ``volume_node``'s grid (segments matched by name), the
        form CovidSegLib's quantification, writers and report take."""
        masks = self.masks_by_label(segmentation_node, self.default_mapping(segmentation_node), volume_node)
        labels = np.zeros(slicer.util.arrayFromVolume(volume_node).shape, np.uint8)
        for value in sorted(masks):  # infection (3, 4, 5) last: it overrides the lung it lies in
            labels[masks[value]] = value
        return labels

    @staticmethod
    def default_mapping(segmentation_node) -> dict[int, list[str]]:
        """Segments matched to CovidSeg labels by name ("left lung", "Right lung", "infection", ...), the way
        ``covidseg evaluate`` matches the segments of a ``.seg.nrrd``."""
        from CovidSegLib.measure.evaluation import label_named

        segmentation = segmentation_node.GetSegmentation()
        mapping: dict[int, list[str]] = {}
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            value = label_named(segmentation.GetSegment(segment_id).GetName())
            if value is not None:
                mapping.setdefault(value, []).append(segment_id)
        return mapping

    # ---- compare -----------------------------------------------------------------------------------------
    def compare(self, segmentation_node, reference_node, volume_node,
                reference_mapping: Mapping[int, Sequence[str]] | None = None, table_node=None):
        """Dice, NSD, HD95 and volumes per structure into a table node (CovidSegLib's metrics)."""
        from CovidSegLib.measure.evaluation import compare_masks

        reference_mapping = reference_mapping or self.default_mapping(reference_node)
        if not reference_mapping:
            raise ValueError(f"say which segments of {reference_node.GetName()} are the lungs and infection")
        predicted = self.masks_by_label(segmentation_node, self.default_mapping(segmentation_node), volume_node)
        referenced = self.masks_by_label(reference_node, reference_mapping, volume_node)
        metrics = compare_masks(predicted, referenced, geometry_from_volume_node(volume_node))
        columns = (("Dice", "dice"), ("NSD", "nsd"), ("NSD tolerance (mm)", "nsd_tolerance_mm"),
                   ("HD95 (mm)", "hd95_mm"), ("Jaccard", "jaccard"), ("Sensitivity", "sensitivity"),
                   ("Specificity", "specificity"), ("Predicted volume (mL)", "predicted_volume_ml"),
                   ("Reference volume (mL)", "reference_volume_ml"))
        rows = [[name] + [getattr(m, key) for _, key in columns] for name, m in metrics.items()]
        return self._fill_table(table_node, "CovidSeg comparison", ["Structure"] + [c for c, _ in columns], rows)

    # ---- quantify ----------------------------------------------------------------------------------------
    def quantify(self, segmentation_node, volume_node, table_node=None, model_path: str | None = None):
        """Lung and infection volumes (and of ground-glass opacity and consolidation, when the segments tell
        them apart), % involved per lung, mean HU, the aeration bands (mL and % of each lung, by HU thresholds on
        the lung segments) and the severity estimate into a table.

        The severity weighs the infection against the false infection on CT without COVID-19 of the model in
        ``model_path`` (default: the one that segmented last, else the bundled one), as ``covidseg report`` does;
        its card is read, the network is not loaded."""
        from CovidSegLib.measure.aeration import BANDS
        from CovidSegLib.measure.quantification import quantify
        from CovidSegLib.measure.severity import floor_of_card

        labels = self.label_map(segmentation_node, volume_node)
        hu = np.asarray(slicer.util.arrayFromVolume(volume_node))
        floor = floor_of_card(self.model_card(model_path))
        result = quantify(labels, geometry_from_volume_node(volume_node), hu, floor)
        header = ["Region", "Volume (mL)", "Infection (mL)", "Involvement (%)", "Healthy lung mean HU",
                  "Infection mean HU"]
        regions = (("Left lung", result.left), ("Right lung", result.right), ("Both lungs", result.total))
        rows = [[name, f.volume_ml, f.infection_ml, f.involvement_percent, f.healthy_mean_hu, f.infection_mean_hu]
                for name, f in regions]
        if result.ggo_ml is not None:  # the infection's two classes, when the labels tell them apart
            header[3:3] = ["Ground-glass opacity (mL)", "Consolidation (mL)"]
            for row, (_, f) in zip(rows, regions):
                row[3:3] = [f.ggo_ml, f.consolidation_ml]
        for key, name, _, _ in BANDS:  # HU thresholds on the lung segments, independent of the infection model
            header += [f"{name} (mL)", f"{name} (%)"]
            for row, (_, f) in zip(rows, regions):
                row += [f.aeration.ml(key), f.aeration.percent(key)]
        table = self._fill_table(table_node, "CovidSeg quantification", header, rows)
        table.SetAttribute("CovidSeg.Severity", result.severity)
        table.SetAttribute("CovidSeg.SeverityReason", result.severity_reason)
        table.SetAttribute("CovidSeg.SeverityNote", result.severity_note)
        table.SetAttribute("CovidSeg.Bilateral", str(result.bilateral))
        table.SetAttribute(WARNINGS_ATTRIBUTE, WARNING_SEPARATOR.join(result.warnings))
        return table, result

    def model_card(self, model_path: str | None = None):
        """The card of the model in ``model_path`` (default: the one that segmented last, else the bundled one),
        read without loading the network."""
        from pathlib import Path

        from CovidSegLib.engine.model import BUNDLED_CARD, read_card

        model_path = model_path or self._model_path
        if self._model is not None and (model_path or None) == self._model_path:
            return self._model.card
        card_path = Path(model_path) if model_path else BUNDLED_CARD
        return read_card(card_path.with_suffix(".json") if card_path.suffix == ".safetensors" else card_path)

    # ---- DICOM SEG and SR --------------------------------------------------------------------------------
    @staticmethod
    def dicom_instance_uids(volume_node) -> list[str]:
        """The SOP Instance UIDs of the DICOM files ``volume_node`` was loaded from, which Slicer's DICOM module
        keeps in its ``DICOM.instanceUIDs`` attribute; empty for a volume read from any other file."""
        text = volume_node.GetAttribute(DICOM_INSTANCE_UIDS_ATTRIBUTE) if volume_node is not None else None
        return text.split() if text else []

    @staticmethod
    def missing_dicom_dependencies() -> list[str]:
        """What DICOM SEG export needs beyond Slicer (which bundles pydicom): highdicom."""
        import importlib.util

        return [] if importlib.util.find_spec("highdicom") is not None else ["highdicom"]

    def export_dicom_seg(self, segmentation_node, volume_node, source_files: Sequence[str], path: str,
                         model_path: str | None = None, sr_path: str | None = None):
        """Write the CovidSeg segments of ``segmentation_node`` as a DICOM SEG of the series ``volume_node`` was
        loaded from, through the code ``covidseg segment -o FILE.dcm`` uses (CovidSegLib.io.dicom_seg), and with
        ``sr_path`` its quantification as a DICOM SR (TID 1500) too. Returns CovidSegLib's ``WrittenSeg``.

        ``source_files``: the series' files, in any order (placed by position), which the widget finds with
        ``slicer.dicomDatabase.fileForInstance`` for each of :meth:`dicom_instance_uids`; files that do not lie
        on the volume's grid are refused (InputError). The segments are those matched by name
        (:meth:`default_mapping`), each described as AUTOMATIC by CovidSeg and the model of :meth:`model_card`:
        segments edited by hand afterwards are still described so."""
        from CovidSegLib import __version__
        from CovidSegLib.io.dicom_seg import AlgorithmIdentity, write_dicom_seg
        from CovidSegLib.labels import LABELS_BY_VALUE

        mapping = self.default_mapping(segmentation_node)
        if not mapping:
            raise ValueError(f"{segmentation_node.GetName()} has no CovidSeg segments (left lung, right lung, "
                             "infection, ...) to export")
        labels = self.label_map(segmentation_node, volume_node)
        geometry = geometry_from_volume_node(volume_node)
        card = self.model_card(model_path)
        identity = AlgorithmIdentity(__version__, card.name, card.weights_sha256)
        written = write_dicom_seg(labels, geometry, path, source_files, identity,
                                  [LABELS_BY_VALUE[value] for value in sorted(mapping)])
        if sr_path:
            from CovidSegLib.measure.dicom_sr import write_quantification_sr
            from CovidSegLib.measure.quantification import quantify
            from CovidSegLib.measure.severity import floor_of_card

            hu = np.asarray(slicer.util.arrayFromVolume(volume_node))
            write_quantification_sr(quantify(labels, geometry, hu, floor_of_card(card)), labels, geometry,
                                    written.path, sr_path, identity)
        return written

    def _fill_table(self, table_node, name: str, header: list[str], rows: list[list]):
        if table_node is None:
            table_node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        table = table_node.GetTable()
        table.Initialize()
        for column, title in enumerate(header):
            array = vtk.vtkStringArray() if column == 0 else vtk.vtkDoubleArray()
            array.SetName(title)
            table.AddColumn(array)
        table.SetNumberOfRows(len(rows))
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                table.SetValue(r, c, vtk.vtkVariant(value if c == 0 else float(value)))
        table_node.Modified()
        return table_node


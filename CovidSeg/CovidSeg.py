"""CovidSeg: segment the lungs and COVID-19 infection in chest CT, compare with a reference, quantify.

Thin glue: the widget holds no logic; :class:`CovidSegLogic` (in ``CovidSegLogic.py``, testable without the
application) turns MRML nodes into arrays and back and calls CovidSegLib. Nothing Slicer does not bundle (torch,
segmentation-models-pytorch) is imported at module load: the module loads in a Slicer without torch and offers to
install it on first use.
"""

from __future__ import annotations

import logging
import math
from typing import Annotated, Optional

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from CovidSegLib.errors import Cancelled
from CovidSegLib.labels import CONSOLIDATION, GGO
from CovidSegLogic import CovidSegLogic  # noqa: F401  (Slicer finds the module's logic class here)

NO_SEGMENT = "(none)"


class CovidSeg(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CovidSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["CovidSeg developers"]
        self.parent.helpText = (
            "Segments the left and right lungs and COVID-19 infection (ground-glass opacity and consolidation) in a "
            "chest CT, compares the result with a reference segmentation (Dice, NSD, HD95, volumes), and quantifies "
            "lung involvement with a MosMedData CT-0..CT-4 estimate. Automatic results: review them."
        )
        self.parent.acknowledgementText = (
            "The bundled model was trained on the COVID-19-CT-Seg dataset (Ma et al. 2020, CC BY-NC-SA) for "
            "non-commercial research use."
        )


@parameterNodeWrapper
class CovidSegParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    modelPath: str = ""
    separateInfection: bool = True
    outputSegmentation: vtkMRMLSegmentationNode
    referenceSegmentation: vtkMRMLSegmentationNode
    comparisonTable: vtkMRMLTableNode
    quantificationTable: vtkMRMLTableNode


class CovidSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[CovidSegLogic] = None
        self._parameterNode: Optional[CovidSegParameterNode] = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._cancelRequested = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CovidSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CovidSegLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.quantifyButton.connect("clicked(bool)", self.onQuantifyButton)
        self.ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSegButton)
        self.ui.referenceSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateReferenceSegmentChoices)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(CovidSegParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode: Optional[CovidSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    def updateButtons(self, caller=None, event=None) -> None:
        node = self._parameterNode
        self.ui.segmentButton.text = "Cancel" if self._running else "Segment"
        self.ui.segmentButton.enabled = bool(node and node.inputVolume)
        self.ui.compareButton.enabled = bool(node and node.outputSegmentation and node.referenceSegmentation
                                             and not self._running)
        self.ui.quantifyButton.enabled = bool(node and node.outputSegmentation and not self._running)
        self.ui.exportDicomSegButton.enabled = bool(
            node and node.outputSegmentation and CovidSegLogic.dicom_instance_uids(node.inputVolume)
            and not self._running)

    def updateReferenceSegmentChoices(self, referenceNode=None) -> None:
        """Offer the reference's segments for each CovidSeg label, pre-selecting the ones whose names match."""
        combos = {1: self.ui.referenceLeftLungComboBox, 2: self.ui.referenceRightLungComboBox,
                  3: self.ui.referenceInfectionComboBox}
        names = []
        defaults = {}
        if referenceNode:
            segmentation = referenceNode.GetSegmentation()
            names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
            defaults = {value: segmentation.GetSegment(ids[0]).GetName()
                        for value, ids in CovidSegLogic.default_mapping(referenceNode).items()}
        for value, combo in combos.items():
            combo.clear()
            combo.addItems([NO_SEGMENT] + names)
            combo.currentText = defaults.get(value, NO_SEGMENT)

    def ensureDependencies(self) -> bool:
        missing = CovidSegLogic.missing_dependencies()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                f"CovidSeg needs these Python packages: {', '.join(missing)}. Install them now? "
                "(PyTorch comes from the PyTorch extension; this can take several minutes.)"):
            return False
        with slicer.util.WaitCursor():
            CovidSegLogic.install_dependencies()
        return not CovidSegLogic.missing_dependencies()

    def onSegmentButton(self) -> None:
        if self._running:
            self._cancelRequested = True
            self.ui.statusLabel.text = "Cancelling..."
            return
        if not self.ensureDependencies():
            return
        node = self._parameterNode
        self._running, self._cancelRequested = True, False
        self.updateButtons()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Segmenting..."

        def progress(fraction: float) -> bool:
            self.ui.progressBar.value = int(round(100 * fraction))
            slicer.app.processEvents()
            return self._cancelRequested

        try:
            with slicer.util.tryWithErrorDisplay("Segmentation failed.", waitCursor=True):
                try:
                    segmentation = self.logic.segment(node.inputVolume, node.outputSegmentation,
                                                      device=node.device, model_path=node.modelPath or None,
                                                      progress=progress,
                                                      separate_infection=node.separateInfection)
                except Cancelled:  # the user asked for it: not an error, and the old result stays as it was
                    self.ui.statusLabel.text = "Cancelled."
                    return
                node.outputSegmentation = segmentation
                warnings = self.logic.warnings(segmentation)
                self.ui.statusLabel.text = " ".join(
                    ["Done. Review the segments before using the numbers."]
                    + [f"Warning: {warning}." for warning in warnings])
                if warnings:
                    slicer.util.warningDisplay("\n".join(warnings), windowTitle="CovidSeg: check the input")
        finally:
            self._running = False
            self.updateButtons()

    def referenceMappingFromGui(self) -> dict:
        """The chosen segments, plus the reference's ground-glass opacity and consolidation segments matched by
        name (a CovidSeg output): they are infection too, and scored as classes against a split result."""
        combos = {1: self.ui.referenceLeftLungComboBox, 2: self.ui.referenceRightLungComboBox,
                  3: self.ui.referenceInfectionComboBox}
        mapping = {value: [combo.currentText] for value, combo in combos.items() if combo.currentText != NO_SEGMENT}
        reference = self._parameterNode.referenceSegmentation
        classes = CovidSegLogic.default_mapping(reference) if reference else {}
        mapping.update({value: ids for value, ids in classes.items() if value in (GGO, CONSOLIDATION)})
        return mapping

    def onCompareButton(self) -> None:
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Comparison failed.", waitCursor=True):
            table = self.logic.compare(node.outputSegmentation, node.referenceSegmentation, node.inputVolume,
                                       self.referenceMappingFromGui(), node.comparisonTable)
            node.comparisonTable = table
            self.ui.comparisonTableView.setMRMLTableNode(table)

    def onQuantifyButton(self) -> None:
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Quantification failed.", waitCursor=True):
            table, result = self.logic.quantify(node.outputSegmentation, node.inputVolume, node.quantificationTable,
                                                model_path=node.modelPath or None)
            node.quantificationTable = table
            self.ui.quantificationTableView.setMRMLTableNode(table)
            involvement = result.total.involvement_percent
            bilateral = ", bilateral" if result.bilateral and result.severity != "CT-0" else ""
            text = (f"Severity {result.severity} ({involvement:.1f}% of both lungs involved{bilateral}). "
                    f"{result.severity_reason}: {result.severity_note}."
                    if not math.isnan(involvement) else "No lung found.")
            classes = ([f"Ground-glass opacity {result.ggo_ml:.1f} mL, consolidation {result.consolidation_ml:.1f} mL."]
                       if result.ggo_ml is not None else [])
            self.ui.severityLabel.text = " ".join([text] + classes + result.warnings)


    def onExportDicomSegButton(self) -> None:
        """The input's DICOM files from the DICOM database, a file name from the user, then the Logic writes the
        SEG and, beside it, the SR (CovidSegLogic.export_dicom_seg)."""
        from pathlib import Path

        import qt

        from CovidSegLib.measure.dicom_sr import sr_path_for

        node = self._parameterNode
        uids = CovidSegLogic.dicom_instance_uids(node.inputVolume)
        with slicer.util.tryWithErrorDisplay("DICOM SEG export failed.", waitCursor=True):
            missing = CovidSegLogic.missing_dicom_dependencies()
            if missing:
                if not slicer.util.confirmOkCancelDisplay(f"DICOM SEG export needs {', '.join(missing)}. Install it "
                                                          "now (pip)?"):
                    return
                for package in missing:
                    slicer.util.pip_install(package)
            files = [slicer.dicomDatabase.fileForInstance(uid) for uid in uids]
            absent = [uid for uid, path in zip(uids, files) if not path]
            if absent:
                raise ValueError(f"{len(absent)} of the {len(uids)} DICOM files of {node.inputVolume.GetName()} are "
                                 f"not in the DICOM database any more (first: instance {absent[0]})")
            path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export DICOM SEG",
                                                  f"{node.inputVolume.GetName()}.seg.dcm", "DICOM files (*.dcm)")
            if not path:
                return
            sr_path = str(sr_path_for(Path(path)))
            self.logic.export_dicom_seg(node.outputSegmentation, node.inputVolume, files, path,
                                        node.modelPath or None, sr_path)
            self.ui.statusLabel.text = (f"Wrote the DICOM SEG {path} and its SR {sr_path}. Add them to the DICOM "
                                        "database (Add DICOM Data) to open them with the CT or send them to a PACS.")


class CovidSegTest(ScriptedLoadableModuleTest):
    """Self-test in a real Slicer: segment the CTChest sample, check the segments, compare and quantify."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_segment_compare_quantify_ctchest()

    def test_segment_compare_quantify_ctchest(self) -> None:
        import SampleData
        import numpy as np

        self.delayDisplay("Loading CTChest")
        volume = SampleData.downloadSample("CTChest")
        logic = CovidSegLogic()
        self.delayDisplay("Segmenting")
        fractions = []
        segmentation = logic.segment(volume, progress=lambda f: fractions.append(f) and False)
        self.assertEqual(fractions[-1], 1.0)
        names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
        from CovidSegLib.labels import SPLIT_OUTPUT_LABELS

        # the bundled card splits infection into ground-glass opacity and consolidation
        self.assertEqual(names, [info.name for info in SPLIT_OUTPUT_LABELS])
        lungs = sum(logic.segment_mask(segmentation, key, volume).sum() for key in ("left_lung", "right_lung"))
        lung_ml = lungs * np.prod(volume.GetSpacing()) / 1000
        self.assertGreater(lung_ml, 2000)
        self.assertLess(lung_ml, 9000)
        table, result = logic.quantify(segmentation, volume)
        self.assertEqual(table.GetNumberOfRows(), 3)  # each lung, both lungs
        if result.ggo_ml is not None:  # the infection's classes: two more columns
            self.assertEqual(table.GetNumberOfColumns(), 8)
            self.assertEqual(table.GetTable().GetColumnName(3), "Ground-glass opacity (mL)")
        self.assertIn(result.severity, ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4"))
        comparison = logic.compare(segmentation, segmentation, volume)
        self.assertAlmostEqual(comparison.GetTable().GetValue(2, 1).ToDouble(), 1.0)  # lungs vs itself
        logging.info("CovidSeg self-test passed")
        self.delayDisplay("Test passed")

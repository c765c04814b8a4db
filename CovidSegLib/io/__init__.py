"""Reading and writing: CT files and DICOM series in (refused when damaged), label maps and segmentations out
(atomically, never over an input), the image and geometry types, orientation, and what a case is."""

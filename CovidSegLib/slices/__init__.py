"""Slice datasets (single 8-bit or HU slices, as MedSeg or the corpus ship them): read, predict, write, evaluate."""

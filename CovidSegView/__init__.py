"""CovidSeg in Slicer's own views, outside the Slicer application: off-screen renders and ``covidseg view``.

This package is glue. Slicer's scene, displayable managers and views come from ``slicer-core`` through Kitware's
``trame-slicer``; segmenting, comparing and quantifying are the CovidSeg module Logic's (``CovidSeg/CovidSegLogic.py``)
and CovidSegLib's. It lives outside CovidSegLib because CovidSegLib must stay free of slicer, qt and vtk imports.
Install it with the ``view`` extra: ``pip install -e ".[view]"``.
"""

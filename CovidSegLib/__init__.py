"""CovidSegLib: segment lungs and COVID-19 infection in chest CT, measure them, compare with references.

Pure Python, usable without 3D Slicer. Importing the package is cheap: it imports neither torch nor any
submodule; import what you need, e.g. ``from CovidSegLib.io.reading import read_volume``.
"""

__version__ = "0.1.0"

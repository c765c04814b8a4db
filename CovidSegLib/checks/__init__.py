"""Checks on what was read: is it a chest CT in Hounsfield units, and is its geometry one a chest CT can have."""

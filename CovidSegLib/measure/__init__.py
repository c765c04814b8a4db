"""Measurement: metrics against a reference, evaluation of cases and folders, quantification of lungs and
infection, and the report a reader opens."""

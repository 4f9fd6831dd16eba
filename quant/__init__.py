"""Quantisation: calibration sets, NNIE mapper configs and bundles, int8 accuracy estimates."""

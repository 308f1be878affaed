# AGPL-3.0 License
"""Shared utilities. Importing this package first keeps ultralytics offline and hands-off:
no connectivity probes, no pip auto-installs (a user who wants them can set the variables)."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

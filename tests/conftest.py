"""Shared test set-up: no network, and a private cache folder for the whole session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

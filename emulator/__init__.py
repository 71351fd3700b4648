"""Local emulator of Claude's Message Batches API.

Point the official SDK at it with `ANTHROPIC_BASE_URL`; see README.md in this
folder for the knobs, the admin endpoints and the behaviours it had to choose.
"""

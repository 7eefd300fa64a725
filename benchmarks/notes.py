"""Analysis text for RESULTS.md: what bounds each ratio, and what profiling showed."""

BOUNDS = {}

PROFILE_NOTES = "(to be written)"

"""HTML from stored results alone: the report never re-runs anything."""

"""Scenarios (what is timed and how often) and statistics over the runner's timestamps."""

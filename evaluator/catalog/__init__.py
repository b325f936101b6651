"""What can be evaluated: backends (from their folders' manifests), models and targets."""

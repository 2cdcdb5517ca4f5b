"""feddx.serve."""

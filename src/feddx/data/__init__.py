"""feddx.data."""

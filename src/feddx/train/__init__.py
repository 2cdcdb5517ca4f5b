"""feddx.train."""

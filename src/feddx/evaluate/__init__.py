"""feddx.evaluate."""

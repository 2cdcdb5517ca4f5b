"""feddx.model."""

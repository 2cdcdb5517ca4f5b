"""feddx.personalize."""

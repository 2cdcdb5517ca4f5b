"""feddx.federated."""

"""Tests of feddx.serve."""

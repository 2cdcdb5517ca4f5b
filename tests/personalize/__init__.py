"""Tests of feddx.personalize (a package: tests/evaluate has a test_hierarchy.py too)."""

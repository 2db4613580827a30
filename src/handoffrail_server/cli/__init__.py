"""Operator command line (`handoffrail`)."""

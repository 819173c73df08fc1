"""Plumbing shared by the domain packages; not a public API."""

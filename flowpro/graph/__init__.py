"""Graphs of jobs: build, validate, plan the insert, and export (networkx at build time only)."""

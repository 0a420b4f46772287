"""Shared geometry without I/O: rays and polyhedra, the cone table, tiles and grids, and the
total order of candidates."""

"""Bridges from the project's objectives to other training libraries (each module imports its library)."""

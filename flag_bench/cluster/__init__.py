"""Cluster back-ends (SLURM through submitit, Ray core) and the thread sizing every engine shares.

Nothing here imports submitit or ray at module level: both are optional extras.
"""

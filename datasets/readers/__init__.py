"""Readers for users' own data: HEST-1k, HEST-Benchmark, Space Ranger, legacy ST and AnnData.

Every reader returns a ``SpatialDataset`` built by ``build.finish_dataset``: the same checks, the
same content-hash ``version``, and the same ``meta`` keys (``corpora``, ``dropped_spots``,
``problems``) that ``flag-bench data check`` prints. Patches stored in HDF5 are read lazily, only
the requested rows; counts are CSR.
"""

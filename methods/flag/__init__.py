"""FLAG and its variants (flag-spec §3–4).

- ``config``: FlagConfig and every variant's preset tables.
- ``net``: FlagNet (graph encoder and/or gene-token DiT, by graph role).
- ``method``: Flag, the fit/predict of the family, with its capability attributes.
- ``variants``: the registered variants, each overriding only what differs.
- ``objectives``: score parameterisations, the alignment loss, the validation score.
- ``graph_encoder``, ``edges``: the spatial graph transformer and static edge conditions.
- ``gene_embeddings`` (+ ``gene_tables``, ``geneformer``): the alignment targets' providers.
"""

"""STFlow (Huang et al., ICML 2025): flow matching over a whole slide's expression with a local,
frame-averaged spatial Transformer as the denoiser."""

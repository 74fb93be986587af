"""Every way a TRIPLEX config departs from the official code, as the named switch and what it
does; stored in ``summary["deviations"]`` of each cell."""

from __future__ import annotations


def deviations(cfg, train, val, official_size: dict, values: dict) -> dict:
    dev: dict[str, object] = {"validation": ("a training slide carved by the harness (official: the test fold)" if val is not None
                          else "none given: last epoch kept (official: the test fold)"),
           "grid": "inferred from um coordinates with per-axis lattice steps, merges counted (official: pixel "
                   "coordinates / 20, unique counts, min-max rescale)",
           "flash_attn": "PyTorch scaled_dot_product_attention"}
    if cfg.target_norm == "harness":
        dev["target_norm"] = (f"harness target ({train.target_transform}) (official: panel-only library size, "
                              "scprep log10 or CPM 1e4 ln)")
    if not cfg.smooth_targets:
        dev["smooth_targets"] = "off (official: 3x3 grid smoothing of train and test targets)"
    else:
        dev["smooth_targets"] = "training targets only (the harness never smooths test truth)"
    if cfg.target_encoder == "convnet":
        dev["target_encoder"] = (f"SmallConv width {cfg.conv_width} from scratch on {cfg.tile_px} px tiles "
                                 "(official: Ciga ResNet-18, 224 px, 49 tokens)")
    elif cfg.tile_px != 224:
        dev["tile_px"] = f"{cfg.tile_px} px (official 224)"
    if cfg.feature_encoder != "ciga-resnet18":
        dev["feature_encoder"] = (f"{cfg.feature_encoder or 'the run encoder'} frozen features "
                                  "(official: Ciga ResNet-18)")
    if cfg.feature_pca:
        dev["feature_pca"] = f"standardised, PCA {cfg.feature_pca} on training spots"
    if cfg.feature_projection or cfg.feature_pca or cfg.feature_encoder != "ciga-resnet18" or cfg.emb_dim != 512:
        dev["feature_projection"] = "Linear(F -> emb_dim) before the neighbour and global encoders (official: none)"
    if cfg.neighbour_source == "grid":
        dev["neighbour_source"] = ("frozen features of the 5x5 spot-grid cells around the spot, empty cells masked "
                                   "(official: 5x5 image tiles of the patch size, off-image tiles masked)")
    size = {k: values[k] for k in official_size if values[k] != official_size[k]}
    if size:
        dev["size"] = size
    recipe = {k: values[k] for k, v in dict(lr=1e-4, epochs=1000, patience=20, plateau_patience=10,
                                             batch_size=128).items() if values[k] != v}
    if recipe:
        dev["recipe"] = recipe
    if not cfg.clamp_outputs:
        dev["clamp_outputs"] = "off (official: outputs clamped at 0)"
    if cfg.init_bias_to_mean:
        dev["init_bias_to_mean"] = "heads start at the training targets' mean (official: default init)"
    if cfg.alpha != 0.3:
        dev["alpha"] = cfg.alpha
    return dev

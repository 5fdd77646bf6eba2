"""What the analysis commands offer in `--help`: their defaults and choices, free of torch so that
building the CLI's parser (every `mtlsweep ... --help`) stays instant."""

DEFAULT_TOWER_TASKS = 4                   # similarity: tower layers compared for this many tasks

COST_FAMILIES = ("single", "hard", "soft")
COST_ARCHS = {
    # Tests and quick looks.
    "tiny": {"conv_channels": [8, 8, 8], "conv_widths": [7, 5, 3], "pool": [2, 2, 2], "dense": [16, 16], "dropout": 0.3},
    # The arch of search/configs/*.yaml.
    "small": {"conv_channels": [64, 48, 48], "conv_widths": [15, 7, 5], "pool": [3, 4, 4], "dense": [64, 64],
              "dropout": 0.2},
    # Basset (Kelley et al. 2016), config.run.ArchConfig's defaults.
    "basset": {"conv_channels": [300, 200, 200], "conv_widths": [19, 11, 7], "pool": [3, 4, 4],
               "dense": [1000, 1000], "dropout": 0.3},
}

"""What every script shares: flags, run folders, DDP/AMP/checkpoints, data, weights, spectra."""

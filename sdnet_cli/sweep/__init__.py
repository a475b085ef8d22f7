"""The lambda sweeps: ``runs`` (sweeps over a lambda grid, the calibration of the per-input rules on
corrupted training images, rules beside the oracles, hold-outs), ``plan`` (which (lambda, image) pairs a
sweep runs and what the others infer) and ``report`` (their Markdown and figures)."""

"""Performance comparisons behind ``neuroplastic bench`` (peers, kernels)."""

"""Tools around the product, not the product: the simulated API, the demo, local replicas."""

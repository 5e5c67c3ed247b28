"""Operating the proxy: configuration, metrics, the admin listener."""

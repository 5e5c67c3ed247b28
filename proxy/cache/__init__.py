"""Carrying out the cache's decisions: waiting for changes (long polling)."""

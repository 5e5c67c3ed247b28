"""aitronos-cache-proxy: an RFC 9111 shared cache in front of the Aitronos transcription API."""

__version__ = "0.1.0"
CACHE_NAME = "aitronos-cache-proxy"

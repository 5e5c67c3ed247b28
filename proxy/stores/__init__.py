"""Where stored responses live: the Store seam, the memory store, the Redis tier."""

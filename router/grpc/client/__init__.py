"""Client-side pieces for callers of the router (the adaptive throttle)."""

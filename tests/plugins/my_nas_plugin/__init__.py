"""A user's NAS plugin: an op, a search space and a controller, defined outside the nas package."""

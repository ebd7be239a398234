"""Live grants: the grant store's interface, its backends, and the views the decision reads."""

"""Use cases: the verification flows and the services around them, over the domain and the ports."""

"""Adapters: the ports made real (memory, Redis, HTTP SMS, e-ID registries) and the HTTP listener."""

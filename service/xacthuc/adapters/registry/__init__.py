"""e-ID registry adapters: the sandbox and the HTTPS provider with mutual TLS."""

"""SMS adapters: the development console and the HTTP gateway."""

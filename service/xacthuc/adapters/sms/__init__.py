"""SMS adapters: the HTTP gateway, and for dev mode the console and the discarding sender."""

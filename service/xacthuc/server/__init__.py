"""The gRPC edge and the composition root: settings, App, servicers, the server process."""

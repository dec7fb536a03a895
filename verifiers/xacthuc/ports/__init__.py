"""Ports: what the use cases need from the outside (store, SMS, e-ID registry), as protocols."""

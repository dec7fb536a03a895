"""The `xacthuc` command line."""

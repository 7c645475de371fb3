"""The `reviews` command line."""

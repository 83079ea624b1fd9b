"""The resolver: sync follows and verifies the logs into Redis; serve answers from it."""

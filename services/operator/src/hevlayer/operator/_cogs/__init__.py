"""Private: clients of the Kubernetes API and of the gateway."""

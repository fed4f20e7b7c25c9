"""Private: reconciliation, kopf handlers and the operator's main loop."""

"""consumer.sources.reconcile."""

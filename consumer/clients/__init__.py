"""consumer.clients."""

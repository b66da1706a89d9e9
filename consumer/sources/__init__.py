"""consumer.sources."""

"""consumer.runtime."""

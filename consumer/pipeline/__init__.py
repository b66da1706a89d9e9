"""consumer.pipeline."""

"""consumer.sources.mns."""

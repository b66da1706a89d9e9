"""consumer.sources.push."""

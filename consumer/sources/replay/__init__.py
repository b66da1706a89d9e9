"""consumer.sources.replay: dead letters run through the lifecycle again (see .transport)."""

"""consumer.reports."""

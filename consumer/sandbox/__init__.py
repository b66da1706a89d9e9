"""A local Alicom sandbox: MNS queues and the Dybaseapi token API on one loopback port.

Run it with `alicom-receipts sandbox` or `python -m consumer.sandbox.server`; tests start it
through `consumer.sandbox.testing.running_sandbox`.
"""

"""A local Alicom sandbox: MNS queues and the Dybaseapi token API on one loopback port.

Run it with `alicom-receipts sandbox` or `python -m alicom_sandbox.server`; tests start it
through `alicom_sandbox.testing.running_sandbox`.
"""

"""Webhooks (issue 9): a tenant's endpoint and signing secret, per-task callback URLs, signed events delivered at
least once with the upstream's retry schedule, a delivery log with replay, and SSRF guards on every target."""

"""Frontends without a tenant key: end-user tokens minted by a team's backend, and the try-it page."""

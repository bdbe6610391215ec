"""Access: the one decision of who a tenant request is and what it may do (policy.py)."""

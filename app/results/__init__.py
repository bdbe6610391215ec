"""Kept results (issue 23): result images copied from the upstream into the organisation's store, served by signed
links, kept for each tenant's retention period."""

"""The ops console: server-rendered pages at /admin/ui over the services the admin API calls."""

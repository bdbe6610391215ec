"""/metrics (Prometheus) and the gauges read when it is scraped."""

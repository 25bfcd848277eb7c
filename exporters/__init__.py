"""Call records and the sinks they are delivered to, off the request path."""

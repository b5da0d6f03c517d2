"""Federation: inbound transport, durable inbox, outbound sender, and the one HTTP client."""

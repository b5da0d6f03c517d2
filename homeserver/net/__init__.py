"""Outbound networking: the one HTTP client for every remote request, server discovery and DNS."""

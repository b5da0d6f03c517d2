"""Testbeds: several homeservers on one machine (``homeserver testbed up``) or in
docker-compose, and federation scenarios run against them through the public APIs."""

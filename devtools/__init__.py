"""Development-only tooling shared by the tests, the demo and the benchmarks (never deployed):
loopback stand-ins for Azurite, the Bot Framework and the engagement hub."""

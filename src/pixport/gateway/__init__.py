"""The gateway: a hospital's archive plus publishing to the hub and serving the hub."""

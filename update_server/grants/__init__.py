"""Key grants on the server: the key service that re-wraps a bundle's data key to an assigned
device's key at check-in, its audit table, and the operator API (docs/security.md, "Key grants")."""

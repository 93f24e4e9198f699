"""The Postgres-backed dev server: shape logs fed from a real Postgres (snapshots in REPEATABLE READ,
changes from a ``test_decoding`` slot), served through the fake's machinery; a throwaway cluster."""

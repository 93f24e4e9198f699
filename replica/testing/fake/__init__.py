"""The fake Electric: in-memory tables and shape logs, and the ``/v1/shape`` machinery (request
parsing, responses, faults, held long-polls and SSE streams) that the Postgres-backed server reuses."""

"""Online domain: the ``*_latest`` feature tables pushed to Redis, and their parity with PostgreSQL."""

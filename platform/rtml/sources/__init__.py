"""Sources of raw records: the seeded transaction simulator and the record schemas."""

"""SQL schema, sessions and migrations."""

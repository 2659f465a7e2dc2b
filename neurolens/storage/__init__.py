"""The append-only run store: run documents, manifest ledger and derived index."""

"""Bulk rendering: manifests, rows rendered with claims and retries, quality checks and reports (what flows run)."""

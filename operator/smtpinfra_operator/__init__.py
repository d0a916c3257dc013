"""The smtp-infra Kopf operator: pure builders and decisions, and one controller per kind that does the I/O."""

"""The smtp-infra Kopf operator: pure builders plus thin handlers that do the I/O."""

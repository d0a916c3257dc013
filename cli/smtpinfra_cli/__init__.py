"""The `smtp-infra` command line."""

"""`python -m smtpinfra_cli` is the same as `smtp-infra`."""

from .app import main

main()

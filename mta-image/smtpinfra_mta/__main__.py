"""``python -m smtpinfra_mta serve --config FILE``."""

from smtpinfra_mta.cli import app

app(prog_name="smtp-infra mta")

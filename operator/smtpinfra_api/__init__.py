"""The smtpinfra.com API: pydantic models of the custom resources and the CRD generator."""

"""The smtp-infra MTA: what SmtpServer pods run. Must not import Kopf or the Kubernetes client."""

"""Pulumi entry point: `pulumi up` in this directory deploys smtp-infra to the current cluster."""

import pulumi
from stack import StackConfig, deploy

config = pulumi.Config()
deploy(
    StackConfig(
        namespace=config.get("namespace") or "smtp-infra-system",
        examples=config.get_bool("examples") if config.get_bool("examples") is not None else True,
        operator_image=config.get("operatorImage") or "smtp-infra/operator:0.1.0",
    )
)

from tests.kube import crds, operator  # noqa: F401

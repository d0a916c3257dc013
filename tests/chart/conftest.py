from tests.kube import crds  # noqa: F401

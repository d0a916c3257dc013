from tests.kube import crds, operator  # noqa: F401
from tests.mta.conftest import sink_factory, tls_files  # noqa: F401

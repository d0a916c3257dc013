from tests.kube import crds, operator
from tests.mta.conftest import tls_files

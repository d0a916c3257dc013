from tests.kube import crds, operator
from tests.mta.conftest import mta_factory, password_hashes, tls_files

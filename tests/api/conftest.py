from tests.kube import crds

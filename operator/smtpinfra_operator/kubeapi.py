"""The Kubernetes client the controllers are given: `smtpinfra_kube`'s `KubeApi` Protocol and errors.

Controllers never build a client; the runtime hands each one a `smtpinfra_kube.Client` (constructor
injection), so a controller's I/O is visible in its signature and a client with another transport
(or a fake in a unit test) can be passed without touching the controllers. There is one client
package and one Protocol: this module only names them for the operator.
"""

from __future__ import annotations

from smtpinfra_kube import ApiException, Client, Informer, KindNotFound, KubeApi, Listener, Paused

__all__ = ["ApiException", "Client", "Informer", "KindNotFound", "KubeApi", "Listener", "Paused"]

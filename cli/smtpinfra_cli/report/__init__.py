"""`smtp-infra report`: a terminal summary of the cluster's smtp-infra resources.

Three layers: ``gather`` reads the cluster (and each MTA pod's ``/stats``), ``model`` turns what
was read into a report with pure functions, ``render`` prints it as rich tables or JSON.
"""

"""The service's routes, one module per concern; each is a thin layer over
:class:`feddx.serve.service.DiagnosisService`."""

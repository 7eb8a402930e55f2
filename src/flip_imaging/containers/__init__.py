"""Container Service: XNAT command registry, launches, a database job queue and process workers.

The web app imports :mod:`flip_imaging.containers.routes`, which registers the event action provider
(``org.nrg.containers.services.CommandActionProvider``) and the worker pool background service.
"""

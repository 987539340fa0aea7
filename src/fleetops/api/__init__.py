"""The HTTP API (FastAPI): tasks, clusters, workers, deployments, changes, metrics."""

from ._app import create_app as create_app

"""The web dashboard: one page at ``/`` over the HTTP API, with live charts.

Our own ES modules and CSS ship in ``static/``; the chart library (uPlot) comes from
its npm package, installed next to the repository by ``make``, and is never copied
here. Without it the page draws plain SVG charts and says so.
"""

from ._mount import CHART_LIBRARY_DIR as CHART_LIBRARY_DIR
from ._mount import mount_dashboard as mount_dashboard

__all__ = ["CHART_LIBRARY_DIR", "mount_dashboard"]

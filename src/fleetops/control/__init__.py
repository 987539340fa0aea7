"""The control plane: phased deployment, readiness, reconciler, apply, quotas."""

from ._plane import PHASES as PHASES
from ._plane import ApplyResult as ApplyResult
from ._plane import ControlPlane as ControlPlane
from ._plane import DeploymentReport as DeploymentReport
from ._plane import default_actor as default_actor
from ._readiness import ReadinessCheck as ReadinessCheck
from ._readiness import ReadinessReport as ReadinessReport
from ._state import FleetRunning as FleetRunning
from ._state import RunningFleet as RunningFleet
from ._state import read_running as read_running

"""Agents, the context they run with, workers, the supervisor and failure detection."""

from ._agent import AgentSpec as AgentSpec
from ._agent import agent as agent
from ._agent import load_agent as load_agent
from ._agent import registered_agents as registered_agents
from ._context import Context as Context
from ._context import EffectCall as EffectCall
from ._context import TaskInfo as TaskInfo
from ._detector import DetectorSettings as DetectorSettings
from ._detector import PhiAccrualFailureDetector as PhiAccrualFailureDetector
from ._supervisor import ClusterPlan as ClusterPlan
from ._supervisor import RestartPolicy as RestartPolicy
from ._supervisor import Supervisor as Supervisor
from ._supervisor import SupervisorEvent as SupervisorEvent
from ._supervisor import WorkerHandle as WorkerHandle
from ._worker import Worker as Worker
from ._worker import WorkerSettings as WorkerSettings

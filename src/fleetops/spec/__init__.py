"""The fleet spec: one YAML file describes a whole fleet.

:func:`check_spec` answers the validated :class:`FleetSpec` or every
:class:`SpecIssue` found, each with its line, column, field path, value and fix;
:func:`load_spec` raises :class:`SpecError` instead. :func:`json_schema` is the
schema editors use to complete and check a spec.
"""

from ._clusters import AgentDefinition as AgentDefinition
from ._clusters import ClusterSpec as ClusterSpec
from ._clusters import FailureDetectorSettings as FailureDetectorSettings
from ._clusters import HealthChecks as HealthChecks
from ._clusters import ResourceQuotas as ResourceQuotas
from ._clusters import RestartSettings as RestartSettings
from ._clusters import RetrySettings as RetrySettings
from ._clusters import ScalingBounds as ScalingBounds
from ._issues import SpecError as SpecError
from ._issues import SpecIssue as SpecIssue
from ._issues import format_issues as format_issues
from ._loader import check_spec as check_spec
from ._loader import check_spec_text as check_spec_text
from ._loader import load_spec as load_spec
from ._loader import load_spec_text as load_spec_text
from ._models import ApiSettings as ApiSettings
from ._models import FleetMetadata as FleetMetadata
from ._models import FleetSpec as FleetSpec
from ._models import StoreSettings as StoreSettings
from ._models import json_schema as json_schema
from ._operations import AgentFailureRecovery as AgentFailureRecovery
from ._operations import AlertingSettings as AlertingSettings
from ._operations import AlertThresholds as AlertThresholds
from ._operations import BusinessHours as BusinessHours
from ._operations import ClusterFailureRecovery as ClusterFailureRecovery
from ._operations import ConsensusFailureRecovery as ConsensusFailureRecovery
from ._operations import CriticalThresholds as CriticalThresholds
from ._operations import Escalation as Escalation
from ._operations import NetworkPartitionRecovery as NetworkPartitionRecovery
from ._operations import ObservabilitySettings as ObservabilitySettings
from ._operations import RecoverySettings as RecoverySettings
from ._operations import RecoveryStrategy as RecoveryStrategy
from ._operations import Resolution as Resolution
from ._operations import Retention as Retention
from ._operations import ThresholdLevel as ThresholdLevel
from ._operations import WarningThresholds as WarningThresholds
from ._providers import BUILTIN_PROVIDER as BUILTIN_PROVIDER
from ._providers import LatencySettings as LatencySettings
from ._providers import OpenAIProviderSpec as OpenAIProviderSpec
from ._providers import ProviderSpec as ProviderSpec
from ._providers import SimulatedProviderSpec as SimulatedProviderSpec
from ._providers import TokenPricing as TokenPricing

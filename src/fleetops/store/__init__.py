"""Durable state: the :class:`Store` protocol and its SQLite and PostgreSQL versions."""

from ._models import TASK_STATES as TASK_STATES
from ._models import TERMINAL_STATES as TERMINAL_STATES
from ._models import AttemptRecord as AttemptRecord
from ._models import ChangeRecord as ChangeRecord
from ._models import ClaimedTask as ClaimedTask
from ._models import Complete as Complete
from ._models import DeploymentRecord as DeploymentRecord
from ._models import EffectBegin as EffectBegin
from ._models import EffectEnd as EffectEnd
from ._models import EffectRecord as EffectRecord
from ._models import EventRecord as EventRecord
from ._models import Fail as Fail
from ._models import NewTask as NewTask
from ._models import Operation as Operation
from ._models import OpResult as OpResult
from ._models import Release as Release
from ._models import Submit as Submit
from ._models import SubmitChild as SubmitChild
from ._models import Submitted as Submitted
from ._models import TaskRecord as TaskRecord
from ._models import WorkerRecord as WorkerRecord
from ._open import DEFAULT_STORE_URL as DEFAULT_STORE_URL
from ._open import open_store as open_store
from ._protocol import Store as Store
from ._sql import event_data as event_data
from ._sqlite import SqliteStore as SqliteStore

"""The policy's optional ``kubernetes:`` section: how big each task's pod is, for ``archiver render kubernetes``.

Nothing else reads it: the worker and ``archiver run`` ignore it. A task without an entry (or a key
left out) gets the defaults of ``archiver.ops.render`` (README "Kubernetes"), sized for a database of a few
GiB: set them for a larger one, e.g. a restore drill's ``scratch`` holds the whole restored database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from .fields import duration_field, text_pattern

QUANTITY = r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?"
Quantity = Annotated[str, text_pattern(QUANTITY, "a Kubernetes quantity such as 500m, 2, 512Mi or 20Gi")]


@dataclass(frozen=True)
class KubernetesTask:
    deadline: Annotated[timedelta, duration_field(timedelta(days=7))] | None = None  # activeDeadlineSeconds
    cpu: Quantity | None = None  # requests.cpu
    memory: Quantity | None = None  # requests.memory
    cpu_limit: Quantity | None = None
    memory_limit: Quantity | None = None
    scratch: Quantity | None = None  # the /scratch emptyDir's sizeLimit (TMPDIR: spools, a drill's cluster)


@dataclass(frozen=True)
class KubernetesConfig:
    backup: KubernetesTask | None = None
    basebackup: KubernetesTask | None = None
    prune: KubernetesTask | None = None
    archive: KubernetesTask | None = None
    retention: KubernetesTask | None = None
    verify: KubernetesTask | None = None

    def task(self, name: str) -> KubernetesTask:
        found = getattr(self, name, None)
        return found if isinstance(found, KubernetesTask) else KubernetesTask()

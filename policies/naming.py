"""The naming convention ``{company}-{environment}-{service}-{instance}`` and its implicit rules.

``acme-prod-api-gateway-2`` is company ``acme``, environment ``prod``, service ``api-gateway``,
instance ``2``. The environment must be one the priority table knows, and the instance is a
number: anything else does not follow the convention and gets no implicit rule, so a name like
``build-box-7`` is never mistaken for a service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

_NAME = re.compile(r"^(?P<company>[a-z0-9]+)-(?P<env>[a-z0-9]+)-(?P<service>[a-z0-9][a-z0-9-]*?)"
                   r"-(?P<instance>[0-9]+)$")


@dataclass(frozen=True)
class ServiceName:
    company: str
    environment: str
    service: str
    instance: int

    @property
    def group(self) -> str:
        """The implicit anti-affinity group shared by every instance of this service."""
        return f"service:{self.company}-{self.environment}-{self.service}"


def parse_name(name: str, environments: Mapping[str, int]) -> ServiceName | None:
    """Split a conventional VM name, or return None if it does not follow the convention."""
    m = _NAME.match(name)
    if m is None or m["env"] not in environments:
        return None
    return ServiceName(m["company"], m["env"], m["service"], int(m["instance"]))
